"""Rows comparing our figures with DREAM's (etl.analysis.comparison).

DREAM numbers are read from the bundled reference JSON, never retyped here. Expected test
values are recomputed here with scipy (binomtest, norm) from the same inputs.
"""
import json
import math

import pandas as pd
import pytest
from scipy import stats

from etl.analysis.comparison import compare_with_dream
from etl.analysis.npv import npv_summary
from etl.analysis.reference import load_dream_reference
from etl.analysis.survival import survival_by_strategy

REF = load_dream_reference()
PRIMARY = "ct_and_mri_disappeared"
CE_IOUS = "ct_and_mri_disappeared_with_contrast_enhanced_intraoperative_ultrasound"
PROTOCOL_MET = "ct_and_mri_disappeared_mri_protocol_met"
RFS = "relapse_free_survival"
Z95 = stats.norm.ppf(0.975)


def _npv(estimate, ci, true_negative=None, residual=None):
    return {"estimate": estimate, "ci95": ci, "true_negative": true_negative,
            "residual": residual}


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
                                "hr": hr * 3, "hr_ci95": [hr * 2, hr * 4], "log_hr": math.log(hr * 3),
                                "log_hr_se": 0.25},
            # DREAM's median below our lower bound
            "dlm_left_behind": {"median": left_median + 5,
                                "median_ci95": [left_median + 1, left_median + 9]},
        },
    }


def _rows():
    key_ce = "ct_and_mri_disappeared_with_contrast_enhanced_intraoperative_ultrasound"
    primary = REF["npv"][PRIMARY]["estimate"]
    npv = {
        PRIMARY: _npv(primary, [primary - 0.1, primary + 0.1], 30, 18),
        key_ce: _npv(None, None, 0, 0),
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


def test_every_row_carries_a_test_field():
    rows = _rows()
    assert all("test" in row for row in rows.values())
    assert rows[f"npv.{PRIMARY}.prior_retrospective_range"]["test"] is None
    assert rows[f"survival_by_surgical_strategy.{RFS}.all_dlm_removed.median"]["test"] is None
    assert rows[f"survival_by_surgical_strategy.{RFS}.dlm_left_behind.median"]["test"] is None


def test_npv_row_has_exact_binomial_test_against_dream_estimate():
    row = _rows()[f"npv.{PRIMARY}"]
    dream = REF["npv"][PRIMARY]["estimate"]
    assert row["test"] == {"method": "exact binomial, two-sided", "p0": dream, "successes": 30,
                           "trials": 48, "p_value": stats.binomtest(30, 48, dream).pvalue}


def test_npv_row_without_evaluable_lesions_has_no_test():
    assert _rows()[f"npv.{CE_IOUS}"]["test"] is None


def test_every_npv_figure_in_the_reference_is_tested():
    npv = {key: _npv(0.5, [0.3, 0.7], 5, 5) for key in (PRIMARY, CE_IOUS)}
    rows = {row["metric"]: row for row in compare_with_dream(npv, {}, REF)}
    for key, figure in REF["npv"].items():
        if isinstance(figure, dict) and "estimate" in figure:
            test = rows[f"npv.{key}"]["test"]
            assert test["p0"] == figure["estimate"]
            assert test["p_value"] == stats.binomtest(5, 10, figure["estimate"]).pvalue


def test_protocol_met_group_is_compared_with_dreams_primary_estimate():
    npv = {PRIMARY: _npv(0.6, [0.5, 0.7], 60, 40), PROTOCOL_MET: _npv(0.7, [0.55, 0.82], 28, 12)}
    rows = compare_with_dream(npv, {}, REF)
    metrics = [row["metric"] for row in rows]
    assert metrics == [f"npv.{PRIMARY}", f"npv.{PROTOCOL_MET}",
                       f"npv.{PRIMARY}.prior_retrospective_range"]
    row = rows[1]
    dream = REF["npv"][PRIMARY]
    assert row["dream"] == dream["estimate"] and row["dream_ci95"] == dream.get("ci95")
    assert row["ours"] == 0.7 and row["dream_in_our_ci"] is True
    assert row["test"]["p0"] == dream["estimate"]
    assert row["test"]["p_value"] == stats.binomtest(28, 40, dream["estimate"]).pvalue
    # absent from npv: no row
    assert len(compare_with_dream({PRIMARY: npv[PRIMARY]}, {}, REF)) == 2


def test_hr_row_has_log_hr_difference_test():
    """Ours: HR = 3 * DREAM's with se(log HR) = 0.25; DREAM's se = ln(upper/lower) / (2 * 1.96).

    d = ln 3; se = sqrt(0.25^2 + se_dream^2); z = d / se; p = 2 * norm.sf(|z|).
    """
    row = _rows()[f"survival_by_surgical_strategy.{RFS}.all_dlm_removed.hr"]
    lower, upper = REF["survival_by_surgical_strategy"][RFS]["all_dlm_removed"]["hr_ci95"]
    se_dream = (math.log(upper) - math.log(lower)) / (2 * Z95)
    se = math.sqrt(0.25 ** 2 + se_dream ** 2)
    test = row["test"]
    assert test["difference_log_hr"] == pytest.approx(math.log(3), rel=1e-12)
    assert test["se"] == pytest.approx(se, rel=1e-12)
    assert test["z"] == pytest.approx(math.log(3) / se, rel=1e-12)
    assert test["p_value"] == pytest.approx(2 * stats.norm.sf(math.log(3) / se), rel=1e-12)
    assert test["ratio_of_hr"] == pytest.approx(3.0, rel=1e-12)
    assert test["ratio_ci95"] == pytest.approx([3 * math.exp(-Z95 * se), 3 * math.exp(Z95 * se)],
                                               rel=1e-12)


def test_hr_row_without_log_hr_se_uses_our_interval_and_not_estimable_hr_has_no_test():
    dream = REF["survival_by_surgical_strategy"][RFS]["all_dlm_removed"]
    ours = {"median": None, "median_ci95": None, "hr": 2.0,
            "hr_ci95": [2.0 * math.exp(-Z95 * 0.25), 2.0 * math.exp(Z95 * 0.25)]}
    (_, row) = compare_with_dream({}, {RFS: {"all_dlm_removed": ours}}, REF)
    with_se = compare_with_dream({}, {RFS: {"all_dlm_removed": {**ours, "log_hr_se": 0.25}}}, REF)[1]
    assert row["test"]["se"] == pytest.approx(with_se["test"]["se"], rel=1e-12)
    assert row["dream"] == dream["hr"]
    missing = {"median": None, "median_ci95": None, "hr": None, "hr_ci95": None, "log_hr": None,
               "log_hr_se": None, "ph_test": None}
    (_, row) = compare_with_dream({}, {RFS: {"all_dlm_removed": missing}}, REF)
    assert row["test"] is None and row["dream_in_our_ci"] is None


def _reference_estimates(reference):
    """Metrics of every figure in the reference that is an estimate with an interval."""
    metrics = {f"npv.{key}" for key, figure in reference["npv"].items()
               if isinstance(figure, dict) and "estimate" in figure}
    survival = reference["survival_by_surgical_strategy"]
    for endpoint, arms in survival.items():
        if not isinstance(arms, dict) or endpoint == "groups":
            continue
        for arm, figures in arms.items():
            for name in ("median", "hr"):
                if name in figures:
                    metrics.add(f"survival_by_surgical_strategy.{endpoint}.{arm}.{name}")
    return metrics


def test_every_reference_estimate_gets_a_row_from_real_results():
    lesions = pd.DataFrame(
        [(p, 10 * p + k, PRIMARY, "true_negative" if k else "residual", p % 2 == 0, True)
         for p in range(6) for k in range(3)],
        columns=["person_id", "lesion_id", "dlm_group", "outcome", "ce_ious", "mri_protocol_met"])
    patients = pd.DataFrame(
        [("all_dlm_removed", 5.0, 1, 30.0, 0), ("all_dlm_removed", 8.0, 1, 40.0, 1),
         ("all_dlm_removed", 20.0, 0, 55.0, 1), ("dlm_left_behind", 3.0, 1, 14.0, 1),
         ("dlm_left_behind", 9.0, 1, 33.0, 1), ("dlm_left_behind", 30.0, 0, 45.0, 0)],
        columns=["strategy", "rfs_months", "rfs_event", "os_months", "os_event"],
    ).assign(person_id=range(6))
    rows = compare_with_dream(npv_summary(lesions), survival_by_strategy(patients), REF)
    metrics = {row["metric"] for row in rows}
    expected = _reference_estimates(REF)
    assert len(expected) >= 8  # 2 NPVs, 4 medians, 2 HRs
    assert expected <= metrics
    assert f"npv.{PRIMARY}.prior_retrospective_range" in metrics
    for row in rows:
        if row["metric"].startswith("npv.") and row["dream"] is not None:
            assert row["test"]["method"] == "exact binomial, two-sided"
        elif row["metric"].endswith(".hr"):
            assert row["test"]["method"].startswith("z test")
            assert 0 < row["test"]["p_value"] <= 1
        else:
            assert row["test"] is None
    json.dumps(rows, allow_nan=False)
