"""NPV subgroups, sensitivity analyses, the chemotherapy regimen (rules R1-R3) and the lesion flow."""
import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from etl.analysis.npv import (PROTOCOL_MET_KEY, npv_estimate, npv_sensitivity, npv_subgroups,
                              npv_summary, outcomes_at_window)
from etl.analysis.subgroups import DIMENSIONS, size_band
from etl.lesions.classify import follow_up_outcome
from etl.lesions.regimen import BACKBONES, counted_drugs, drug_classes, regimen
from etl.pipeline import lesion_flow

# --- regimen (R1-R3) ---------------------------------------------------------------------

# concept ids by ingredient, read from the mapping file so the test cannot drift from it
CONCEPT = {
    "oxaliplatin": 1318011, "irinotecan": 1367268, "fluorouracil": 955632, "capecitabine": 1337620,
    "bevacizumab": 1397141, "cetuximab": 1315411, "panitumumab": 19100985,
}


def test_drug_class_file_holds_the_concepts_the_tests_use():
    classes = drug_classes()
    assert {classes[CONCEPT[name]] for name in ("fluorouracil", "capecitabine")} == {"fluoropyrimidine"}
    assert classes[CONCEPT["cetuximab"]] == classes[CONCEPT["panitumumab"]] == "anti_egfr"


@pytest.mark.parametrize("drugs, expected", [
    (["fluorouracil", "oxaliplatin"], ("oxaliplatin_based", "none")),
    (["capecitabine", "oxaliplatin", "bevacizumab"], ("oxaliplatin_based", "anti_vegf")),
    (["fluorouracil", "irinotecan", "cetuximab"], ("irinotecan_based", "anti_egfr")),
    (["fluorouracil", "oxaliplatin", "irinotecan"], ("oxaliplatin_and_irinotecan", "none")),
    (["capecitabine"], ("fluoropyrimidine_only", "none")),
    (["bevacizumab", "panitumumab"], ("other", "anti_vegf_and_anti_egfr")),
])
def test_regimen_backbone_and_targeted_agent(drugs, expected):
    assert regimen([CONCEPT[d] for d in drugs]) == expected


def test_regimen_unmapped_drug_is_other_and_no_drug_is_unknown():
    assert regimen([0]) == ("other", "none")  # an unmapped drug code is stored with concept 0
    assert regimen([0, CONCEPT["fluorouracil"]]) == ("fluoropyrimidine_only", "none")
    assert regimen([]) == ("unknown", "unknown")


def test_only_drugs_from_chemotherapy_start_to_first_hepatectomy_count():
    start, surgery = dt.date(2020, 1, 1), dt.date(2020, 6, 1)
    drugs = [(dt.date(2019, 12, 1), 1), (start, 2), (surgery, 3), (dt.date(2020, 7, 1), 4)]
    assert counted_drugs(drugs, start, surgery) == [2, 3]
    assert counted_drugs(drugs, start, None) == [2, 3, 4]
    assert regimen(counted_drugs([(dt.date(2020, 7, 1), CONCEPT["oxaliplatin"])], start, surgery)) == \
        ("unknown", "unknown")


# --- follow-up window (rule O2) ------------------------------------------------------------

T0 = dt.date(2020, 1, 1)


def _months(n):
    return T0 + dt.timedelta(days=round(n * 30.4375))


def test_follow_up_outcome_window_edges():
    assert follow_up_outcome(T0, _months(6), _months(30), 12)[:2] == ("residual", _months(6))
    # regrowth after the window, follow-up long enough: true negative at the last study
    assert follow_up_outcome(T0, _months(18), _months(30), 12)[:2] == ("true_negative", _months(30))
    assert follow_up_outcome(T0, None, _months(15), 24) == (
        "unevaluable", None, "follow-up shorter than the window")
    assert follow_up_outcome(T0, None, None, 24)[2] == "no follow-up imaging of the site"
    assert follow_up_outcome(T0, None, T0 + dt.timedelta(days=731), 24)[0] == "true_negative"


def _window_lesions():
    rows = [
        # lesion, basis, outcome at 24 months, t0, first regrowth, last follow-up
        (1, "follow_up", "residual", T0, _months(18), _months(30)),
        (2, "follow_up", "unevaluable", T0, None, _months(15)),
        (3, "pathology", "true_negative", T0, None, None),
        (4, "follow_up", "true_negative", T0, None, _months(30)),
        (5, None, "unevaluable", None, None, None),  # no hepatectomy
    ]
    frame = pd.DataFrame(rows, columns=["lesion_id", "outcome_basis", "outcome", "t0_date",
                                        "followup_regrowth_date", "last_followup_date"])
    return frame.assign(person_id=[1, 1, 2, 3, 4], dlm_group="ct_and_mri_disappeared", ce_ious=False)


def test_outcomes_at_window_reapplies_rule_o2_to_follow_up_lesions_only():
    lesions = _window_lesions()
    assert list(outcomes_at_window(lesions, 12)) == [
        "true_negative", "true_negative", "true_negative", "true_negative", "unevaluable"]
    assert list(outcomes_at_window(lesions, 24)) == list(lesions["outcome"])
    # SQLite hands dates back as ISO strings
    as_text = lesions.assign(**{c: lesions[c].map(lambda d: d and d.isoformat())
                                for c in ("t0_date", "followup_regrowth_date", "last_followup_date")})
    assert list(outcomes_at_window(as_text, 12)) == list(outcomes_at_window(lesions, 12))


def test_sensitivity_counts_by_hand():
    sens = npv_sensitivity(_window_lesions())
    main = sens["followup_window_24_months"]["ct_and_mri_disappeared"]
    assert (main["true_negative"], main["residual"], main["unevaluable"]) == (2, 1, 2)
    short = sens["followup_window_12_months"]["ct_and_mri_disappeared"]
    assert (short["true_negative"], short["residual"], short["unevaluable"]) == (4, 0, 1)
    best = sens["unevaluable_as_true_negative"]["ct_and_mri_disappeared"]
    worst = sens["unevaluable_as_residual"]["ct_and_mri_disappeared"]
    assert (best["estimate"], worst["estimate"]) == (4 / 5, 2 / 5)
    assert best["unevaluable"] == worst["unevaluable"] == 0


def test_sensitivity_keeps_rejecting_unknown_outcomes():
    lesions = _window_lesions()
    lesions.loc[0, "outcome"] = "gone"
    with pytest.raises(ValueError, match="gone"):
        npv_sensitivity(lesions)


# --- subgroups --------------------------------------------------------------------------

def _subgroup_lesions():
    rows = [
        # person, group, outcome, ce_ious, protocol met, size, regimen, targeted
        (1, "ct_and_mri_disappeared", "true_negative", True, True, 8.0, "oxaliplatin_based", "anti_vegf"),
        (1, "ct_and_mri_disappeared", "residual", True, True, 12.0, "oxaliplatin_based", "anti_vegf"),
        (2, "ct_and_mri_disappeared", "true_negative", False, False, 25.0, "irinotecan_based", "none"),
        (3, "ct_and_mri_disappeared", "residual", False, None, None, None, None),
        (3, "ct_disappeared_mri_visible", "residual", False, True, 19.9, None, None),
        (4, "not_disappeared", None, False, True, 30.0, "oxaliplatin_based", "none"),
    ]
    frame = pd.DataFrame(rows, columns=["person_id", "dlm_group", "outcome", "ce_ious", "mri_protocol_met",
                                        "baseline_size_mm", "chemo_regimen", "chemo_targeted_agent"])
    return frame.assign(lesion_id=range(1, len(rows) + 1))


def test_size_bands_edges():
    assert [size_band(s) for s in (9.9, 10.0, 19.9, 20.0, None, float("nan"))] == [
        "lt_10_mm", "10_to_19_mm", "10_to_19_mm", "ge_20_mm", "unknown", "unknown"]


def test_subgroups_by_hand():
    sub = npv_subgroups(_subgroup_lesions())
    both = sub["ct_and_mri_disappeared"]
    assert both["ce_ious"]["used"]["estimate"] == 0.5
    assert (both["ce_ious"]["not_used"]["true_negative"], both["ce_ious"]["not_used"]["residual"]) == (1, 1)
    assert both["mri_protocol"]["not_met"]["estimate"] == 1.0
    assert both["mri_protocol"]["unknown"]["residual"] == 1
    assert both["baseline_size"]["ge_20_mm"]["lesions"] == 1
    assert both["chemo_regimen"]["oxaliplatin_based"]["lesions"] == 2
    assert both["chemo_regimen"]["unknown"]["lesions"] == 1
    assert both["chemo_targeted_agent"]["none"]["true_negative"] == 1
    assert sub["ct_disappeared"]["baseline_size"]["10_to_19_mm"]["lesions"] == 2


def test_subgroups_partition_each_group():
    lesions = _subgroup_lesions()
    summary, sub = npv_summary(lesions), npv_subgroups(lesions)
    for group, dims in sub.items():
        assert set(dims) == set(DIMENSIONS) - {"all"}
        for dimension, cells in dims.items():
            assert list(cells) == list(DIMENSIONS[dimension])
            for count in ("lesions", "true_negative", "residual", "unevaluable"):
                assert sum(c[count] for c in cells.values()) == summary[group][count], (group, dimension)
    assert list(sub["ct_and_mri_disappeared"]["chemo_regimen"]) == list(BACKBONES)


def test_protocol_met_group_is_dream_analysed_population():
    lesions = _subgroup_lesions()
    met = npv_summary(lesions)[PROTOCOL_MET_KEY]
    assert met == npv_estimate(lesions.iloc[[0, 1]])


def test_lesion_flow_analysed_box_subtracts_mri_protocol_not_met():
    flow = lesion_flow(_subgroup_lesions())
    assert flow["disappeared_on_ct_and_mri"]["lesions"] == 4
    assert flow["excluded_imaging_protocol_not_met"]["lesions"] == 1
    # not recorded (None) stays in, as DREAM's arithmetic 203 - 51 = 152 subtracts only the failed protocol
    assert flow["analysed_ct_and_mri_disappeared"] == {"lesions": 3, "patients": 2}
    assert flow["evaluable_ct_and_mri_disappeared"]["lesions"] == 3


# --- schema upgrade ---------------------------------------------------------------------------

def test_registry_upgrade_adds_new_nullable_columns(tmp_path):
    from registry_schema.registry import add_missing_columns

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    old = sa.MetaData()
    sa.Table("course", old, sa.Column("person_id", sa.Integer, primary_key=True))
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO course VALUES (1)"))
    new = sa.MetaData()
    sa.Table("course", new, sa.Column("person_id", sa.Integer, primary_key=True),
             sa.Column("chemo_regimen", sa.String(32)))
    with engine.begin() as conn:
        assert add_missing_columns(conn, new) == ["course.chemo_regimen"]
        assert add_missing_columns(conn, new) == []
        assert conn.execute(sa.text("SELECT person_id, chemo_regimen FROM course")).all() == [(1, None)]
    strict = sa.MetaData()
    sa.Table("course", strict, sa.Column("person_id", sa.Integer, primary_key=True),
             sa.Column("required", sa.Integer, nullable=False))
    with engine.begin() as conn, pytest.raises(RuntimeError, match="required"):
        add_missing_columns(conn, strict)
