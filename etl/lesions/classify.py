"""Each lesion's DLM group and outcome, by the rules in docs/fhir_profile.md (DREAM's definitions).

Rules (cited by tests):
- G1 baseline = CT/MRI on or before chemotherapy start; a lesion not visible at baseline is no DLM.
- G2 post-chemotherapy = the latest CT and the latest MRI after chemotherapy start, on or before the
  first hepatectomy.
- G3 groups: CT visible -> not_disappeared; CT and MRI not visible -> ct_and_mri_disappeared; CT not
  visible, MRI visible -> ct_disappeared_mri_visible; no post-chemo MRI -> ct_disappeared_mri_missing.
- O1 resected: pathology viable -> residual, no viable tumour -> true_negative, none -> unevaluable.
- O2 left in place, ablated or no handling: a follow-up CT/MRI within the window showing the lesion ->
  residual; else the last follow-up study at least the window after t0 -> true_negative; else unevaluable.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from etl.lesions.timeline import DAYS_PER_MONTH, Timeline

DLM_GROUPS = ("ct_and_mri_disappeared", "ct_disappeared_mri_visible", "ct_disappeared_mri_missing")


@dataclass
class LesionResult:
    dlm_group: str
    outcome: str | None = None
    outcome_basis: str | None = None
    outcome_date: dt.date | None = None
    unevaluable_reason: str | None = None
    handling: str | None = None
    mri_protocol_met: bool | None = None
    baseline_date: dt.date | None = None
    baseline_size_mm: float | None = None
    post_ct_date: dt.date | None = None
    post_mri_date: dt.date | None = None
    followup_regrowth_date: dt.date | None = None
    last_followup_date: dt.date | None = None


def _latest(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: (r["assessment_date"], r["finding"] == "visible")) if rows else None


def classify_lesion(assessments: list[dict], handling: list[dict], line: Timeline,
                    window_months: float) -> LesionResult:
    """assessments / handling: this lesion's dlm_lesion_assessment / dlm_lesion_handling rows."""
    imaging = [a for a in assessments if a["modality"] in ("ct", "mri")]
    if line.chemo_start is None:
        return LesionResult("no_chemotherapy")
    baseline = [a for a in imaging if a["assessment_date"] <= line.chemo_start]
    visible_at_baseline = [a for a in baseline if a["finding"] == "visible"]
    if not visible_at_baseline:
        return LesionResult("not_visible_at_baseline")
    sizes = [a["size_mm"] for a in visible_at_baseline if a["size_mm"] is not None]
    base = {"baseline_date": max(a["assessment_date"] for a in visible_at_baseline),
            "baseline_size_mm": max(sizes) if sizes else None}
    surgery = line.first_hepatectomy
    post = [a for a in imaging if a["assessment_date"] > line.chemo_start
            and (surgery is None or a["assessment_date"] <= surgery)]
    ct = _latest([a for a in post if a["modality"] == "ct"])
    mri = _latest([a for a in post if a["modality"] == "mri"])
    if ct is None:
        return LesionResult("no_post_chemo_ct", **base)
    if ct["finding"] == "visible":
        return LesionResult("not_disappeared", post_ct_date=ct["assessment_date"], **base)
    group = ("ct_disappeared_mri_missing" if mri is None else
             "ct_disappeared_mri_visible" if mri["finding"] == "visible" else "ct_and_mri_disappeared")
    result = LesionResult(group, mri_protocol_met=mri["mri_protocol_met"] if mri else None,
                          post_ct_date=ct["assessment_date"], post_mri_date=mri["assessment_date"] if mri else None,
                          **base)
    result.handling = max(handling, key=lambda h: h["surgery_date"])["handling"] if handling else None
    _outcome(result, assessments, line, window_months)
    return result


def _outcome(result: LesionResult, assessments: list[dict], line: Timeline, window_months: float) -> None:
    t0 = line.t0
    if t0 is None:
        result.outcome, result.unevaluable_reason = "unevaluable", "no hepatectomy"
        return
    if result.handling == "resected":
        pathology = [a for a in assessments if a["modality"] == "pathology"]
        result.outcome_basis = "pathology"
        if not pathology:
            result.outcome, result.unevaluable_reason = "unevaluable", "resected without pathology finding"
            return
        viable = [a for a in pathology if a["finding"] == "viable_tumor"]
        chosen = viable[0] if viable else pathology[0]
        result.outcome = "residual" if viable else "true_negative"
        result.outcome_date = chosen["assessment_date"]
        return
    result.outcome_basis = "follow_up"
    followup = sorted(a["assessment_date"] for a in assessments
                      if a["modality"] in ("ct", "mri") and a["assessment_date"] > t0)
    regrowth = [a["assessment_date"] for a in assessments
                if a["modality"] in ("ct", "mri") and a["assessment_date"] > t0 and a["finding"] == "visible"]
    result.followup_regrowth_date = min(regrowth) if regrowth else None
    result.last_followup_date = followup[-1] if followup else None
    result.outcome, result.outcome_date, result.unevaluable_reason = follow_up_outcome(
        t0, result.followup_regrowth_date, result.last_followup_date, window_months)


def follow_up_outcome(t0: dt.date, first_regrowth: dt.date | None, last_followup: dt.date | None,
                      window_months: float) -> tuple[str, dt.date | None, str | None]:
    """Rule O2 for a lesion not resected: (outcome, outcome_date, unevaluable_reason).

    Only the first follow-up study showing the lesion and the last follow-up study of the liver matter,
    so the analysis re-applies this rule for other windows (sensitivity analyses) from those two dates.
    """
    window_days = window_months * DAYS_PER_MONTH
    if first_regrowth is not None and (first_regrowth - t0).days <= window_days:
        return "residual", first_regrowth, None
    if last_followup is not None and (last_followup - t0).days >= window_days:
        return "true_negative", last_followup, None
    return "unevaluable", None, ("no follow-up imaging of the site" if last_followup is None
                                 else "follow-up shorter than the window")
