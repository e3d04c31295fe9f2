"""MEASUREMENT from FHIR Observations whose code maps to the Measurement domain (e.g. tumour size).

| rule | destination | source | logic |
|---|---|---|---|
| M1 | measurement_concept_id | Observation.code | mappings; 0 if unmapped (source value kept) |
| M2 | measurement_date | effectiveDateTime, else the report's date | |
| M3 | value_as_number, unit_concept_id | valueQuantity.value / .code | unit via mappings (UCUM) |
| M4 | measurement_type_concept_id | report kind | EHR radiology report (32841) for imaging, pathology report (32835), else EHR |
| M5 | measurement_event_id, meas_event_field_concept_id | the imaging study | links the size to its study |
"""
from __future__ import annotations

from etl.transform.context import MapContext
from etl.transform.fhirdata import to_datetime
from etl.vocabulary import Mapping

UCUM = "http://unitsofmeasure.org"


def transform(obs: dict, mapping: Mapping | None, source: str, value: dict, when, type_meaning: str,
              study_id: int | None, ctx: MapContext) -> tuple[str, int]:
    row_id = ctx.ids.id("measurement", "Observation/" + obs["id"])
    unit = ctx.codes.system_code(UCUM, value["unit"] or "") if value["unit"] else None
    ctx.add("measurement", {
        "measurement_id": row_id, "person_id": ctx.person_id(obs),
        "measurement_concept_id": mapping.concept_id if mapping else 0,
        "measurement_date": when, "measurement_datetime": to_datetime(obs.get("effectiveDateTime")),
        "measurement_type_concept_id": ctx.codes.convention(type_meaning),
        "value_as_number": value["number"], "value_as_concept_id": None,
        "unit_concept_id": unit.concept_id if unit else 0,
        "measurement_source_value": source[:50], "measurement_source_concept_id": 0,
        "unit_source_value": (value["unit"] or "")[:50] or None, "value_source_value": (value["text"] or "")[:50],
        "measurement_event_id": study_id,
        "meas_event_field_concept_id": ctx.codes.convention("field_procedure_occurrence_id") if study_id else None,
    })
    return "measurement", row_id
