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
from etl.transform.domain import Fact
from etl.transform.fhirdata import to_datetime

UCUM = "http://unitsofmeasure.org"


def row(fact: Fact, ctx: MapContext) -> tuple[str, int]:
    row_id = ctx.ids.id("measurement", fact.key)
    value = fact.value
    unit = ctx.codes.system_code(UCUM, value["unit"] or "") if value["unit"] else None
    ctx.add("measurement", {
        "measurement_id": row_id, "person_id": fact.person_id, "measurement_concept_id": fact.concept_id,
        "measurement_date": fact.start, "measurement_datetime": to_datetime(fact.start_text),
        "measurement_type_concept_id": ctx.codes.convention(fact.type_meaning),
        "value_as_number": value["number"], "value_as_concept_id": None,
        "unit_concept_id": unit.concept_id if unit else 0,
        "measurement_source_value": fact.source[:50], "measurement_source_concept_id": 0,
        "unit_source_value": (value["unit"] or "")[:50] or None, "value_source_value": (value["text"] or "")[:50],
        "measurement_event_id": fact.event_id,
        "meas_event_field_concept_id": ctx.codes.convention("field_procedure_occurrence_id") if fact.event_id else None,
    })
    return "measurement", row_id
