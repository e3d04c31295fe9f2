"""Per-patient surgical strategy and survival times (DESIGN.md "The clinical model").

- S1 strategy, for patients with at least one ct_and_mri_disappeared lesion: all_dlm_removed when every
  such lesion was resected or ablated, else dlm_left_behind (DREAM's reference arm).
- S2 RFS: t0 -> first recurrence after t0 or death; censored at last contact. Months = days / 30.4375.
- S3 OS: t0 -> death; censored at last contact.
"""
from __future__ import annotations

from etl.lesions.classify import LesionResult
from etl.lesions.timeline import Timeline, months_between

REMOVED = {"resected", "ablated"}


def strategy(lesions: list[LesionResult]) -> str | None:
    primary = [r for r in lesions if r.dlm_group == "ct_and_mri_disappeared"]
    if not primary:
        return None
    return "all_dlm_removed" if all(r.handling in REMOVED for r in primary) else "dlm_left_behind"


def patient_course(line: Timeline, lesions: list[LesionResult]) -> dict:
    course = {
        "chemo_start_date": line.chemo_start, "chemo_end_date": line.chemo_end,
        "first_hepatectomy_date": line.first_hepatectomy, "t0_date": line.t0, "ce_ious": line.ce_ious,
        "death_date": line.death, "last_contact_date": line.last_contact, "strategy": strategy(lesions),
        "recurrence_date": None, "rfs_months": None, "rfs_event": None, "os_months": None, "os_event": None,
    }
    t0 = line.t0
    if t0 is None:
        return course
    end_of_follow_up = max(d for d in (line.last_contact, line.death, t0) if d is not None)
    recurrence = next((d for d in line.recurrences if d > t0), None)
    course["recurrence_date"] = recurrence
    rfs_events = [d for d in (recurrence, line.death) if d is not None]
    if rfs_events:
        course["rfs_months"], course["rfs_event"] = months_between(t0, min(rfs_events)), 1
    else:
        course["rfs_months"], course["rfs_event"] = months_between(t0, end_of_follow_up), 0
    if line.death is not None:
        course["os_months"], course["os_event"] = months_between(t0, line.death), 1
    else:
        course["os_months"], course["os_event"] = months_between(t0, end_of_follow_up), 0
    return course
