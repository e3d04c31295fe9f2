"""SOURCE_TO_CONCEPT_MAP and CDM_SOURCE: the registry documents its own mappings and provenance.

| rule | destination | source | logic |
|---|---|---|---|
| V1 | source_to_concept_map | every row of the loaded mapping CSVs | source_vocabulary_id = short name of the FHIR system |
| V2 | cdm_source | run settings | FHIR version R4 (parsed with fhir.resources R4B), mapping digest as vocabulary_version, ETL version, site name from DLMREG_SITE_NAME |
| V3 | cdm_source.cdm_version_concept_id | none | 0: the concept for CDM v5.4 was not verified in a public source |
| V4 | concept | mappings/concepts.csv | rows whose required fields were all verified; valid dates = the open interval (not an Athena release) |
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from importlib.metadata import PackageNotFoundError, version

import csv

import mappings
from etl.vocabulary import CodeMap

SYSTEM_NAMES = {
    "http://snomed.info/sct": "SNOMED", "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm", "http://unitsofmeasure.org": "UCUM",
    "http://hl7.org/fhir/administrative-gender": "FHIR gender",
    "http://terminology.hl7.org/CodeSystem/condition-clinical": "FHIR cond-clinical",
    "http://terminology.hl7.org/CodeSystem/v2-0136": "HL7 v2 0136",
}
OPEN_START, OPEN_END = dt.date(1970, 1, 1), dt.date(2099, 12, 31)


def _vocabulary_name(system: str) -> str:
    return SYSTEM_NAMES.get(system, "Local " + hashlib.sha1(system.encode()).hexdigest()[:8])


def source_to_concept_rows(codes: CodeMap) -> list[dict]:
    return [{
        "source_code": m.code[:50], "source_concept_id": 0, "source_vocabulary_id": _vocabulary_name(m.system),
        "source_code_description": f"{m.display} [{m.meaning}]"[:255], "target_concept_id": m.concept_id,
        "target_vocabulary_id": (m.vocabulary or "None")[:20], "valid_start_date": OPEN_START,
        "valid_end_date": OPEN_END, "invalid_reason": None,
    } for m in codes.mappings]


def _package_version() -> str:
    try:
        return version("dlm-registry")
    except PackageNotFoundError:
        return "source checkout"


def cdm_source_row(codes: CodeMap, source: str, today: dt.date) -> dict:
    digest = hashlib.sha256(repr(sorted((m.system, m.code, m.concept_id) for m in codes.mappings)).encode())
    return {
        "cdm_source_name": "DLM registry", "cdm_source_abbreviation": "DLMREG",
        "cdm_holder": os.environ.get("DLMREG_SITE_NAME", "registry site")[:255],
        "source_description": f"FHIR R4 ({source}) parsed with fhir.resources R4B models",
        "source_documentation_reference": "docs/fhir_profile.md",
        "cdm_etl_reference": f"dlm-registry {_package_version()}",
        "source_release_date": today, "cdm_release_date": today, "cdm_version": "v5.4",
        "cdm_version_concept_id": 0, "vocabulary_version": "dlmreg " + digest.hexdigest()[:12],  # varchar(20)
    }


CONCEPT_REQUIRED = ("concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id", "concept_code")


def concept_rows() -> tuple[list[dict], int]:
    """The verified concept subset, and how many rows were left out for unverified required fields.

    A site that needs the whole vocabulary loads Athena's CONCEPT.csv instead (mappings/README.md).
    """
    rows, skipped = [], 0
    with (mappings.DIRECTORY / "concepts.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not all(row[field].strip() for field in CONCEPT_REQUIRED):
                skipped += 1
                continue
            rows.append({
                "concept_id": int(row["concept_id"]), "concept_name": row["concept_name"][:255],
                "domain_id": row["domain_id"], "vocabulary_id": row["vocabulary_id"],
                "concept_class_id": row["concept_class_id"], "standard_concept": row["standard_concept"] or None,
                "concept_code": row["concept_code"][:50], "valid_start_date": OPEN_START,
                "valid_end_date": OPEN_END, "invalid_reason": row["invalid_reason"] or None,
            })
    return rows, skipped
