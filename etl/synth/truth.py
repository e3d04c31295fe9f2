"""Per-lesion and per-patient truth of a course, by the observable rules of docs/fhir_profile.md.

Why: truth.json must equal what a correct registry derives from the FHIR output. So the outcome is
computed from the records the course actually produces (whether a viable-tumour observation exists,
the follow-up study dates, the lesion's regrowth date), not from the latent residual alone.
"""

from __future__ import annotations

from .params import SynthParams
from .resources import Rendered
from .timeline import DAYS_PER_MONTH, Course, Lesion, months, strategy


def outcome(lesion: Lesion, course: Course, window_days: float) -> str | None:
    """true_negative | residual | unevaluable for a DLM; None for a lesion that did not disappear."""
    if not lesion.is_dlm:
        return None
    if lesion.handling == "resected":
        if lesion.pathology_viable is None:
            return "unevaluable"
        return "residual" if lesion.pathology_viable else "true_negative"
    t0 = course.t0
    if lesion.regrowth and any(lesion.regrowth <= d and (d - t0).days <= window_days for d in course.followups):
        return "residual"
    if course.followups and (course.followups[-1] - t0).days >= window_days:
        return "true_negative"
    return "unevaluable"


def lesion_rows(course: Course, rendered: Rendered, params: SynthParams) -> list[dict]:
    window_days = params.outcome_window_months * DAYS_PER_MONTH
    rows = []
    for lesion in course.lesions:
        # A narrative-only patient's lesions have no BodyStructure: they are known by segment and number.
        body_structure, identifier = rendered.lesion_ids.get(lesion.number, (None, None))
        rows.append({
            "patient": rendered.patient_id,
            "lesion": identifier,
            "body_structure": body_structure,
            "segment": lesion.segment,
            "number": lesion.number,
            "group": lesion.group,
            "outcome": outcome(lesion, course, window_days),
            "residual_cells": lesion.residual,
            "handling": lesion.handling,
            "ce_ious": course.stages[lesion.stage].ce_ious,
        })
    return rows


def patient_row(course: Course, rendered: Rendered) -> dict:
    """Strategy and survival from time zero (the last hepatectomy), censored at last contact."""
    t0 = course.t0
    last = course.last_contact()
    events = [d for d in (course.recurrence, course.death) if d]
    rfs_end = min(events) if events else last
    os_end = course.death or last
    return {
        "patient": rendered.patient_id,
        "strategy": strategy(course),
        "rfs_months": months((rfs_end - t0).days),
        "rfs_event": bool(events),
        "os_months": months((os_end - t0).days),
        "os_event": course.death is not None,
        "chemo_drugs": sorted({d.drug for d in course.drugs}),
    }
