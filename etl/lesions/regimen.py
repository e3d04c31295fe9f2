"""Pre-operative chemotherapy regimen of a patient, from the drug exposures before the first hepatectomy.

Why: DREAM-style analyses ask whether the NPV depends on the chemotherapy (oxaliplatin is linked to
sinusoidal injury that hides lesions on MRI; biologics change how lesions shrink). Each drug's class is
data (mappings/drug_classes.csv, classes from the WHO ATC index); the regimen is named by its backbone.

Rules (cited by tests):
- R1 the drugs counted are drug_exposure rows behind a `chemotherapy` event that start on or after the
  chemotherapy start and on or before the first hepatectomy (all of them when there is none).
- R2 backbone: oxaliplatin and irinotecan -> oxaliplatin_and_irinotecan; oxaliplatin -> oxaliplatin_based;
  irinotecan -> irinotecan_based; only fluoropyrimidines -> fluoropyrimidine_only; drugs of no known
  class (unmapped codes, concept 0) -> other; no drug exposure counted -> unknown (chemotherapy recorded
  only as a procedure, or none).
- R3 targeted agent: anti_vegf, anti_egfr, anti_vegf_and_anti_egfr, none; unknown when no drug is counted.
"""
from __future__ import annotations

import datetime as dt
from functools import cache

import mappings
from etl.vocabulary import read_mapping_csv

COLUMNS = ("drug_concept_id", "ingredient", "drug_class", "atc_code", "provenance")
BACKBONES = ("oxaliplatin_and_irinotecan", "oxaliplatin_based", "irinotecan_based", "fluoropyrimidine_only",
             "other", "unknown")
TARGETED_AGENTS = ("anti_vegf", "anti_egfr", "anti_vegf_and_anti_egfr", "none", "unknown")


@cache
def drug_classes() -> dict[int, str]:
    """drug_concept_id -> class, from mappings/drug_classes.csv (every row needs a provenance)."""
    rows = read_mapping_csv(mappings.DIRECTORY / "drug_classes.csv", COLUMNS)
    return {int(row["drug_concept_id"]): row["drug_class"].strip() for row in rows}


def counted_drugs(drugs: list[tuple[dt.date, int]], chemo_start: dt.date | None,
                  first_hepatectomy: dt.date | None) -> list[int]:
    """R1: concept ids of the (start date, drug_concept_id) exposures given before the first hepatectomy."""
    return [concept for start, concept in drugs
            if (chemo_start is None or start >= chemo_start)
            and (first_hepatectomy is None or start <= first_hepatectomy)]


def regimen(concept_ids: list[int]) -> tuple[str, str]:
    """R2 and R3: (backbone, targeted agent) of the counted drug concepts."""
    if not concept_ids:
        return "unknown", "unknown"
    known = drug_classes()
    classes = {known.get(concept) for concept in concept_ids}
    if {"oxaliplatin", "irinotecan"} <= classes:
        backbone = "oxaliplatin_and_irinotecan"
    elif "oxaliplatin" in classes:
        backbone = "oxaliplatin_based"
    elif "irinotecan" in classes:
        backbone = "irinotecan_based"
    elif "fluoropyrimidine" in classes:
        backbone = "fluoropyrimidine_only"
    else:
        backbone = "other"
    vegf, egfr = "anti_vegf" in classes, "anti_egfr" in classes
    targeted = ("anti_vegf_and_anti_egfr" if vegf and egfr else "anti_vegf" if vegf
                else "anti_egfr" if egfr else "none")
    return backbone, targeted
