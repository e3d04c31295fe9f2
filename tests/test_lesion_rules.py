"""Hand-made cases for each lesion and patient rule (ids from etl/lesions/classify.py and course.py)."""
from __future__ import annotations

import datetime as dt

import pytest

from etl.lesions.classify import classify_lesion
from etl.lesions.course import patient_course
from etl.lesions.timeline import Timeline

D = dt.date
LINE = Timeline(chemo_start=D(2020, 1, 10), chemo_end=D(2020, 4, 1), hepatectomies=[D(2020, 5, 1)],
                last_contact=D(2023, 1, 1))


def a(day, modality, finding, size=None):
    return {"assessment_date": day, "modality": modality, "finding": finding, "size_mm": size,
            "mri_protocol_met": True if modality == "mri" else None}


BASE = [a(D(2020, 1, 2), "ct", "visible", 12.0), a(D(2020, 1, 3), "mri", "visible", 14.0)]


def test_g1_not_visible_at_baseline_is_no_dlm():
    assert classify_lesion([a(D(2020, 1, 2), "ct", "not_visible")], [], LINE, 24).dlm_group == "not_visible_at_baseline"


def test_g1_imaging_after_chemo_start_is_not_baseline():
    rows = [a(D(2020, 2, 1), "ct", "visible"), a(D(2020, 4, 10), "ct", "not_visible")]
    assert classify_lesion(rows, [], LINE, 24).dlm_group == "not_visible_at_baseline"


@pytest.mark.parametrize("ct,mri,group", [
    ("visible", "not_visible", "not_disappeared"),
    ("not_visible", "not_visible", "ct_and_mri_disappeared"),
    ("not_visible", "visible", "ct_disappeared_mri_visible"),
    ("not_visible", None, "ct_disappeared_mri_missing"),
])
def test_g3_groups(ct, mri, group):
    rows = BASE + [a(D(2020, 4, 10), "ct", ct)] + ([a(D(2020, 4, 12), "mri", mri)] if mri else [])
    result = classify_lesion(rows, [], LINE, 24)
    assert result.dlm_group == group
    assert result.baseline_size_mm == 14.0 and result.baseline_date == D(2020, 1, 3)


def test_g2_latest_post_chemo_study_counts_and_later_studies_do_not():
    rows = BASE + [a(D(2020, 2, 15), "ct", "visible"), a(D(2020, 4, 10), "ct", "not_visible"),
                   a(D(2020, 4, 12), "mri", "not_visible"), a(D(2020, 8, 1), "ct", "visible")]
    assert classify_lesion(rows, [], LINE, 24).dlm_group == "ct_and_mri_disappeared"


DLM = BASE + [a(D(2020, 4, 10), "ct", "not_visible"), a(D(2020, 4, 12), "mri", "not_visible")]
RESECTED = [{"surgery_date": D(2020, 5, 1), "handling": "resected"}]
LEFT = [{"surgery_date": D(2020, 5, 1), "handling": "left_in_place"}]


@pytest.mark.parametrize("pathology,outcome", [("viable_tumor", "residual"), ("no_viable_tumor", "true_negative"),
                                               (None, "unevaluable")])
def test_o1_resected_outcome_from_pathology(pathology, outcome):
    rows = DLM + ([a(D(2020, 5, 10), "pathology", pathology)] if pathology else [])
    result = classify_lesion(rows, RESECTED, LINE, 24)
    assert (result.outcome, result.outcome_basis) == (outcome, "pathology")


def test_o2_regrowth_within_window_is_residual():
    rows = DLM + [a(D(2020, 8, 1), "ct", "not_visible"), a(D(2021, 2, 1), "ct", "visible")]
    result = classify_lesion(rows, LEFT, LINE, 24)
    assert (result.outcome, result.outcome_date) == ("residual", D(2021, 2, 1))


def test_o2_window_boundary_in_whole_days():
    # 24 months = 730.5 days: a study 730 days after t0 is inside the window but not long enough.
    t0 = D(2020, 5, 1)
    short = DLM + [a(t0 + dt.timedelta(days=730), "ct", "not_visible")]
    long = DLM + [a(t0 + dt.timedelta(days=731), "ct", "not_visible")]
    regrow_late = DLM + [a(t0 + dt.timedelta(days=731), "ct", "visible")]
    assert classify_lesion(short, LEFT, LINE, 24).outcome == "unevaluable"
    assert classify_lesion(long, LEFT, LINE, 24).outcome == "true_negative"
    assert classify_lesion(regrow_late, LEFT, LINE, 24).outcome == "true_negative"


def test_o2_no_follow_up_is_unevaluable_with_reason():
    result = classify_lesion(DLM, LEFT, LINE, 24)
    assert (result.outcome, result.unevaluable_reason) == ("unevaluable", "no follow-up imaging of the site")


def test_no_surgery_is_unevaluable():
    line = Timeline(chemo_start=D(2020, 1, 10), last_contact=D(2021, 1, 1))
    assert classify_lesion(DLM, [], line, 24).unevaluable_reason == "no hepatectomy"


def test_s1_strategy_and_s2_s3_survival():
    removed = classify_lesion(DLM + [a(D(2020, 5, 10), "pathology", "no_viable_tumor")], RESECTED, LINE, 24)
    left = classify_lesion(DLM, LEFT, LINE, 24)
    line = Timeline(chemo_start=D(2020, 1, 10), hepatectomies=[D(2020, 3, 1), D(2020, 5, 1)],
                    recurrences=[D(2020, 2, 1), D(2021, 5, 1)], death=D(2022, 5, 1), last_contact=D(2022, 5, 1))
    course = patient_course(line, [removed, left])
    assert course["strategy"] == "dlm_left_behind"
    assert course["t0_date"] == D(2020, 5, 1)  # the completing stage of a two-stage resection
    assert course["recurrence_date"] == D(2021, 5, 1)  # the recurrence before t0 does not count
    assert course["rfs_months"] == pytest.approx(365 / 30.4375) and course["rfs_event"] == 1
    assert course["os_months"] == pytest.approx(730 / 30.4375) and course["os_event"] == 1
    assert patient_course(line, [removed])["strategy"] == "all_dlm_removed"
    censored = patient_course(Timeline(hepatectomies=[D(2020, 5, 1)], last_contact=D(2021, 5, 1)), [removed])
    assert (censored["rfs_event"], censored["os_event"]) == (0, 0)
    assert censored["rfs_months"] == pytest.approx(365 / 30.4375)
