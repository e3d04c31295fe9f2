"""DLM-specific checks, each with a severity. Each rule reads a named frame (a SQL select over the
registry) so that great-expectations can check it like a table.

Rule ids (cited by tests): DLM1 group values, DLM2 outcome values, DLM3 every DLM has an outcome or an
explicit unevaluable reason, DLM4 lesion identities unique per patient, DLM5 no lesion handled two
different ways, DLM6 every analysed DLM's MRI met the DREAM protocol (warning: DREAM excluded such
lesions, the registry reports them), DLM7 every lesion has a baseline study before chemotherapy,
DLM8 every lesion has a post-chemotherapy CT before surgery (warning: a missing study leaves the lesion
unclassified, it does not corrupt others), DLM9 every DLM has a post-chemotherapy
MRI (warning), DLM10 chemotherapy ended before the post-chemotherapy studies, DLM11 pathology after
the surgery, DLM12 follow-up outcomes after the surgery, DLM13 report text agrees with the structured
findings of the same lesion (warning: structured data wins; the text is kept in dlm_text_comparison).
"""
from __future__ import annotations

import sqlalchemy as sa

from quality_checks.checks import Check, Frame

GROUPS = ["not_disappeared", "ct_disappeared_mri_visible", "ct_and_mri_disappeared", "ct_disappeared_mri_missing",
          "not_visible_at_baseline", "no_post_chemo_ct", "no_chemotherapy"]
DLM_GROUPS = ["ct_disappeared_mri_visible", "ct_and_mri_disappeared", "ct_disappeared_mri_missing"]
OUTCOMES = ["true_negative", "residual", "unevaluable"]


def dlm_plan(tables: dict[str, sa.Table]) -> tuple[list[Check], dict[str, Frame]]:
    """The DLM checks and the frames they run on."""
    return dlm_checks(), {name: Frame(select) for name, select in _selects(tables).items()}


def _selects(tables: dict[str, sa.Table]) -> dict[str, sa.Select]:
    """Named selects the DLM rules run on."""
    outcome, lesion, handling = tables["dlm_lesion_outcome"], tables["dlm_lesion"], tables["dlm_lesion_handling"]
    course, assessment = tables["dlm_patient_course"], tables["dlm_lesion_assessment"]
    dlm = outcome.c.dlm_group.in_(DLM_GROUPS)
    return {
        "dlm_lesion_outcome": sa.select(outcome),
        "dlm_dlm_outcome": sa.select(
            outcome.c.lesion_id, outcome.c.outcome, outcome.c.mri_protocol_met,
            sa.case((outcome.c.outcome != "unevaluable", "n/a"), else_=outcome.c.unevaluable_reason)
            .label("unevaluable_reason")).where(dlm),
        "dlm_lesion": sa.select(lesion),
        "dlm_text_comparison": sa.select(tables["dlm_text_comparison"]),
        "dlm_lesion_dates": sa.select(
            outcome.c.lesion_id, outcome.c.post_ct_date, outcome.c.post_mri_date, course.c.chemo_end_date,
            sa.case((outcome.c.outcome_basis == "follow_up", outcome.c.outcome_date)).label("follow_up_outcome_date"),
            course.c.t0_date).select_from(outcome.join(course, course.c.person_id == outcome.c.person_id)).where(dlm),
        "dlm_pathology_dates": sa.select(
            assessment.c.lesion_id, assessment.c.assessment_date, handling.c.surgery_date)
        .select_from(assessment.join(handling, handling.c.lesion_id == assessment.c.lesion_id))
        .where(assessment.c.modality == "pathology"),
        "dlm_lesion_handling_count": sa.select(
            handling.c.lesion_id, sa.func.count(sa.distinct(handling.c.handling)).label("distinct_handlings"))
        .group_by(handling.c.lesion_id),
    }


def dlm_checks() -> list[Check]:
    """The rules; single-column expectations run on the check's field."""
    return [Check(c.name, c.check_type, c.frame, c.field, c.severity, c.threshold_pct, c.expectation,
                  c.kwargs if "column_A" in c.kwargs or "column_list" in c.kwargs else {"column": c.field, **c.kwargs},
                  c.description) for c in _rules()]


def _rules() -> list[Check]:
    return [
        Check("DLM1:dlm_group_values", "DLM1", "dlm_lesion_outcome", "dlm_group", "critical", 0.0,
              "ExpectColumnValuesToBeInSet", {"value_set": GROUPS}, "every lesion has a known group"),
        Check("DLM2:outcome_values", "DLM2", "dlm_dlm_outcome", "outcome", "critical", 0.0,
              "ExpectColumnValuesToBeInSet", {"value_set": OUTCOMES}, "DLM outcomes are from the defined set"),
        Check("DLM3:dlm_has_outcome", "DLM3", "dlm_dlm_outcome", "outcome", "critical", 0.0,
              "ExpectColumnValuesToNotBeNull", {}, "every DLM has an outcome"),
        Check("DLM3:unevaluable_has_reason", "DLM3", "dlm_dlm_outcome", "unevaluable_reason", "critical", 0.0,
              "ExpectColumnValuesToNotBeNull", {}, "every unevaluable DLM says why"),
        Check("DLM4:lesion_identity_unique", "DLM4", "dlm_lesion", "lesion_source_value", "critical", 0.0,
              "ExpectCompoundColumnsToBeUnique", {"column_list": ["person_id", "lesion_source_value"]},
              "lesion identities are unique per patient"),
        Check("DLM5:single_handling", "DLM5", "dlm_lesion_handling_count", "distinct_handlings", "critical", 0.0,
              "ExpectColumnValuesToBeBetween", {"max_value": 1},
              "no lesion is both resected and left in place (one handling per lesion)"),
        Check("DLM7:baseline_before_chemotherapy", "DLM7", "dlm_lesion_outcome", "dlm_group", "critical", 0.0,
              "ExpectColumnValuesToNotBeInSet", {"value_set": ["not_visible_at_baseline"]},
              "every lesion was seen on a baseline study before chemotherapy"),
        Check("DLM8:post_chemo_ct_before_surgery", "DLM8", "dlm_lesion_outcome", "dlm_group", "warning", 0.0,
              "ExpectColumnValuesToNotBeInSet", {"value_set": ["no_post_chemo_ct"]},
              "every lesion has a post-chemotherapy CT before the surgery"),
        Check("DLM9:dlm_has_post_chemo_mri", "DLM9", "dlm_lesion_dates", "post_mri_date", "warning", 0.0,
              "ExpectColumnValuesToNotBeNull", {}, "every DLM has a post-chemotherapy MRI (DREAM required CT and MRI)"),
        Check("DLM10:chemo_ends_before_post_chemo_imaging", "DLM10", "dlm_lesion_dates", "post_ct_date", "critical",
              0.0, "ExpectColumnPairValuesAToBeGreaterThanB",
              {"column_A": "post_ct_date", "column_B": "chemo_end_date", "or_equal": True,
               "ignore_row_if": "either_value_is_missing"},
              "chemotherapy ended on or before the post-chemotherapy CT"),
        Check("DLM11:pathology_after_surgery", "DLM11", "dlm_pathology_dates", "assessment_date", "critical", 0.0,
              "ExpectColumnPairValuesAToBeGreaterThanB",
              {"column_A": "assessment_date", "column_B": "surgery_date", "or_equal": True,
               "ignore_row_if": "either_value_is_missing"},
              "pathology findings are dated on or after the surgery"),
        Check("DLM12:follow_up_after_surgery", "DLM12", "dlm_lesion_dates", "follow_up_outcome_date", "critical", 0.0,
              "ExpectColumnPairValuesAToBeGreaterThanB",
              {"column_A": "follow_up_outcome_date", "column_B": "t0_date", "or_equal": False,
               "ignore_row_if": "either_value_is_missing"},
              "follow-up outcomes are dated after the surgery"),
        Check("DLM13:text_agrees_with_structured", "DLM13", "dlm_text_comparison", "agrees", "warning", 0.0,
              "ExpectColumnValuesToBeInSet", {"value_set": [True]},
              "report text agrees with the structured findings of the same lesion (structured data is used)"),
        Check("DLM6:mri_protocol_met", "DLM6", "dlm_dlm_outcome", "mri_protocol_met", "warning", 0.0,
              "ExpectColumnValuesToBeInSet", {"value_set": [True]},
              "post-chemotherapy MRI had DWI and hepatobiliary phase (flagged, not blocking)"),
    ]
