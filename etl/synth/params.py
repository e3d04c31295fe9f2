"""Parameters of the synthetic DREAM-like cohort.

Why a module of its own: every default that stands for a published DREAM figure is read at run time
from ``etl/analysis/reference/dream_reference.json`` (never retyped), so the generator and the
analysis compare against the same numbers. Defaults that are *not* DREAM figures say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "analysis" / "reference" / "dream_reference.json"


@cache
def dream_reference() -> dict:
    """The DREAM reference figures (read once per process)."""
    return json.loads(REFERENCE_PATH.read_text(encoding="utf-8"))


def _mri_given_ct() -> float:
    flow = dream_reference()["lesion_flow"]
    return flow["disappeared_on_ct_and_mri"]["lesions"] / flow["disappeared_on_ct"]["lesions"]


def _npv_ct_and_mri() -> float:
    return dream_reference()["npv"]["ct_and_mri_disappeared"]["estimate"]


def _rfs_median(arm: str) -> float:
    return dream_reference()["survival_by_surgical_strategy"]["relapse_free_survival"][arm]["median"]


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the latent clinical course (probabilities are per lesion unless stated).

    Attributes
    ----------
    non_cohort_share: share of patients with colorectal cancer but no liver metastasis (not in truth).
    p_disappear_ct: P(lesion not visible on post-chemotherapy CT).
    p_disappear_mri_given_ct: P(not visible on post-chemotherapy MRI | gone on CT); default = DREAM
        lesion_flow disappeared_on_ct_and_mri / disappeared_on_ct.
    npv_ct_and_mri: P(no residual cancer | gone on CT and MRI); default = DREAM npv estimate.
    npv_ct_only: P(no residual cancer | gone on CT, visible on MRI). Synthetic assumption (0.3), not a
        DREAM figure: DREAM did not report an NPV for this group.
    mri_protocol_met_share: per MRI report, P(both DWI and hepatobiliary phase were done).
    coded_value_share: per lesion-visible Observation, P(value coded HL7 v2-0136 Y/N, not boolean).
    two_stage_share: per patient with >= 2 lesions, P(two-stage hepatectomy).
    ce_ious_share: per patient, P(intraoperative ultrasound was contrast-enhanced).
    ious_sensitivity_ce / ious_sensitivity: P(a residual DLM is found on CE-IOUS / plain IOUS).
    ious_false_positive: P(a DLM without residual cancer is "found" on IOUS).
    left_in_place_share: per patient, P(the surgeon leaves DLMs not found on IOUS in place).
    ablation_share_visible / ablation_share_dlm: P(ablation instead of resection) for visible lesions /
        for not-found DLMs when the surgeon removes all DLMs.
    pathology_missing_share: P(a resected DLM has no viable-tumour observation).
    followup_months: end of follow-up after time zero; CT every ``followup_interval_months``.
    lost_to_followup_share: per patient, P(follow-up stops early, uniformly 6-20 months).
    outcome_window_months: the outcome rule's window (docs/fhir_profile.md, 24 months by default).
    os_median_months: median of the exponential time to death. Synthetic assumption (48): DREAM's OS
        median was not reached.
    rfs_median_months_all_dlm_removed / rfs_median_months_dlm_left_behind: median of the exponential
        time to a recurrence elsewhere than a tracked DLM site, per arm; defaults = DREAM RFS medians.
    narrative_only_share: per cohort patient, P(no lesion BodyStructures and no per-lesion Observations:
        the lesions exist only in the report texts). Drawn from its own random stream, so the clinical
        courses and every other resource are the same as with 0 (a narrative-only twin).
    narrative_ja_share: per narrative-only patient, P(the reports are written in Japanese).
    """

    non_cohort_share: float = 0.05
    p_disappear_ct: float = 0.5
    p_disappear_mri_given_ct: float = field(default_factory=_mri_given_ct)
    npv_ct_and_mri: float = field(default_factory=_npv_ct_and_mri)
    npv_ct_only: float = 0.3
    mri_protocol_met_share: float = 0.9
    coded_value_share: float = 0.2
    two_stage_share: float = 0.1
    ce_ious_share: float = 0.5
    ious_sensitivity_ce: float = 0.6
    ious_sensitivity: float = 0.4
    ious_false_positive: float = 0.05
    left_in_place_share: float = 0.55
    ablation_share_visible: float = 0.05
    ablation_share_dlm: float = 0.10
    pathology_missing_share: float = 0.03
    followup_months: float = 36.0
    followup_interval_months: float = 3.0
    lost_to_followup_share: float = 0.10
    outcome_window_months: float = 24.0
    os_median_months: float = 48.0
    rfs_median_months_all_dlm_removed: float = field(default_factory=lambda: _rfs_median("all_dlm_removed"))
    rfs_median_months_dlm_left_behind: float = field(default_factory=lambda: _rfs_median("dlm_left_behind"))
    narrative_only_share: float = 0.0
    narrative_ja_share: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if "_months" in f.name:
                if not value > 0:
                    raise ValueError(f"{f.name} must be > 0, got {value!r}")
            elif not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be a probability in [0, 1], got {value!r}")

    def as_dict(self) -> dict:
        """All parameters by name (for truth.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
