"""Write a synthetic cohort as Bulk Data NDJSON (one ``<ResourceType>.ndjson`` per type) plus truth.json.

Why streaming: each patient is simulated, rendered and written before the next, so memory stays
flat for large cohorts; only the small truth rows are kept. Every patient draws from its own
seeded stream, so output is byte-identical for identical arguments and patient i does not change
when the cohort grows.
"""

from __future__ import annotations

import json
import random
from contextlib import ExitStack
from pathlib import Path

from . import truth
from .params import SynthParams
from .people import mrns
from .resources import render
from .timeline import simulate

RESOURCE_TYPES = (
    "Patient",
    "Condition",
    "BodyStructure",
    "DiagnosticReport",
    "Observation",
    "Procedure",
    "MedicationAdministration",
    "DocumentReference",
)


def _line(resource: dict) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_cohort(out_dir: Path, patients: int, seed: int, params: SynthParams | None = None) -> dict:
    """Generate ``patients`` synthetic patients into ``out_dir`` (created if missing).

    Parameters
    ----------
    out_dir: directory for ``<ResourceType>.ndjson`` (all eight types, possibly empty) and ``truth.json``;
        files of those names are overwritten.
    patients: number of patients (cohort and non-cohort).
    seed: the only source of randomness; same arguments give byte-identical files.
    params: the clinical-course parameters (defaults: ``SynthParams()``, DREAM figures where they exist).

    Returns
    -------
    ``{"patients", "cohort_patients", "lesions", "resources": {type: count}}``.
    """
    params = params or SynthParams()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(RESOURCE_TYPES, 0)
    lesion_rows: list[dict] = []
    patient_rows: list[dict] = []
    with ExitStack() as stack:
        files = {
            rt: stack.enter_context((out_dir / f"{rt}.ndjson").open("w", encoding="utf-8", newline="\n"))
            for rt in RESOURCE_TYPES
        }
        for index, mrn in enumerate(mrns(seed, patients)):
            course = simulate(random.Random(f"dlm-synth:{seed}:{index}:course"), params, index, mrn)
            rendered = render(course, seed, params)
            for resource_type, resource in rendered.resources:
                files[resource_type].write(_line(resource))
                counts[resource_type] += 1
            if course.cohort:
                lesion_rows.extend(truth.lesion_rows(course, rendered, params))
                patient_rows.append(truth.patient_row(course, rendered))
    document = {
        "params": {"seed": seed, "patients": patients, **params.as_dict()},
        "lesions": lesion_rows,
        "patients": patient_rows,
    }
    with (out_dir / "truth.json").open("w", encoding="utf-8", newline="\n") as f:
        json.dump(document, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return {
        "patients": patients,
        "cohort_patients": len(patient_rows),
        "lesions": len(lesion_rows),
        "resources": counts,
    }
