"""Rows comparing our figures with DREAM's (etl.analysis.comparison).

DREAM numbers are read from the bundled reference JSON, never retyped here.
"""
from etl.analysis.comparison import compare_with_dream
from etl.analysis.reference import load_dream_reference

REF = load_dream_reference()
PRIMARY = "ct_and_mri_disappeared"
RFS = "relapse_free_survival"


def _npv(estimate, ci):
    return {"estimate": estimate, "ci95": ci}


def _survival():
    ref = REF["survival_by_surgical_strategy"]
    removed_median = ref[RFS]["all_dlm_removed"]["median"]
    left_median = ref[RFS]["dlm_left_behind"]["median"]
    hr = ref[RFS]["all_dlm_removed"]["hr"]
    return {
        RFS: {
            # DREAM's median inside [x - 1, open upper bound]
            "all_dlm_removed": {"median": removed_median + 0.5,
                                "median_ci95": [removed_median - 1, None],
                                "hr": hr * 3, "hr_ci95": [hr * 2, hr * 4]},
            # DREAM's median below our lower bound
            "dlm_left_behind": {"median": left_median + 5,
                                "median_ci95": [left_median + 1, left_median + 9]},
        },
    }


def _rows():
    key_ce = "ct_and_mri_disappeared_with_contrast_enhanced_intraoperative_ultrasound"
    primary = REF["npv"][PRIMARY]["estimate"]
    npv = {
        PRIMARY: _npv(primary, [primary - 0.1, primary + 0.1]),
        key_ce: _npv(None, None),
        "ct_disappeared": _npv(0.5, [0.4, 0.6]),  # not in DREAM's npv block: no row
    }
    return {row["metric"]: row for row in compare_with_dream(npv, _survival(), REF)}


def test_npv_rows_for_figures_in_both():
    rows = _rows()
    primary = rows[f"npv.{PRIMARY}"]
    assert primary["dream"] == REF["npv"][PRIMARY]["estimate"]
    assert primary["dream_in_our_ci"] is True
    assert primary["dream_ci95"] is None and primary["ours_in_dream_ci"] is None
    ce = rows["npv.ct_and_mri_disappeared_with_contrast_enhanced_intraoperative_ultrasound"]
    assert ce["ours"] is None and ce["dream_in_our_ci"] is None
    assert "npv.ct_disappeared" not in rows


def test_prior_retrospective_range_row():
    row = _rows()[f"npv.{PRIMARY}.prior_retrospective_range"]
    low, high = REF["npv"]["prior_retrospective_range"]
    assert row["dream_ci95"] == [low, high]
    assert row["ours_in_dream_ci"] is (low <= REF["npv"][PRIMARY]["estimate"] <= high)
    outside = compare_with_dream({PRIMARY: _npv(high + 0.05, [high, 1.0])}, {}, REF)
    assert outside[-1]["ours_in_dream_ci"] is False


def test_survival_rows_treat_missing_upper_bound_as_not_reached():
    rows = _rows()
    removed = rows[f"survival_by_surgical_strategy.{RFS}.all_dlm_removed.median"]
    assert removed["dream_in_our_ci"] is True  # upper bound None = +infinity
    left = rows[f"survival_by_surgical_strategy.{RFS}.dlm_left_behind.median"]
    assert left["dream_in_our_ci"] is False and left["ours_in_dream_ci"] is False
    hr = rows[f"survival_by_surgical_strategy.{RFS}.all_dlm_removed.hr"]
    dream = REF["survival_by_surgical_strategy"][RFS]["all_dlm_removed"]
    assert hr["dream"] == dream["hr"] and hr["dream_ci95"] == dream["hr_ci95"]
    assert hr["dream_in_our_ci"] is False


def test_no_rows_for_endpoints_we_do_not_have():
    assert not any("overall_survival" in metric for metric in _rows())


def test_not_reached_dream_median_gives_none():
    survival = {"overall_survival": {"dlm_left_behind": {"median": 30.0,
                                                         "median_ci95": [20.0, None]}}}
    dream = {"survival_by_surgical_strategy": {"overall_survival": {
        "dlm_left_behind": {"median": None, "median_ci95": [None, None]}}}}
    (row,) = compare_with_dream({}, survival, dream)
    assert row["dream"] is None
    assert row["dream_in_our_ci"] is None and row["ours_in_dream_ci"] is None
