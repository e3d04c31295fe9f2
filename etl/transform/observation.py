"""OBSERVATION from FHIR Observations outside the Measurement domain (lesion visibility, handling,
IOUS findings, pathology viability, MRI protocol flags: mostly local codes with concept_id 0).

| rule | destination | source | logic |
|---|---|---|---|
| O1 | observation_concept_id | Observation.code | mappings; 0 if unmapped (source value kept) |
| O2 | observation_date | effectiveDateTime, else the report's or procedure's date | |
| O3 | value_as_string | value[x] | `true`/`false`, the coded value's code, or the string |
| O4 | value_as_number | valueQuantity.value | |
| O5 | observation_type_concept_id | report kind | as measurement rule M4 |
| O6 | observation_event_id, obs_event_field_concept_id | the imaging study or surgery | |
"""
from __future__ import annotations

from etl.transform.context import MapContext
from etl.transform.domain import Fact
from etl.transform.fhirdata import to_datetime


def row(fact: Fact, ctx: MapContext) -> tuple[str, int]:
    row_id = ctx.ids.id("observation", fact.key)
    value = fact.value
    ctx.add("observation", {
        "observation_id": row_id, "person_id": fact.person_id, "observation_concept_id": fact.concept_id,
        "observation_date": fact.start, "observation_datetime": to_datetime(fact.start_text),
        "observation_type_concept_id": ctx.codes.convention(fact.type_meaning),
        "value_as_number": value["number"], "value_as_string": (value["text"] or "")[:60] or None,
        "observation_source_value": fact.source[:50], "observation_source_concept_id": 0,
        "value_source_value": (value["text"] or "")[:50] or None,
        "observation_event_id": fact.event_id,
        "obs_event_field_concept_id": ctx.codes.convention("field_procedure_occurrence_id") if fact.event_id else None,
    })
    return "observation", row_id
