"""DRUG_EXPOSURE from FHIR MedicationAdministration (and MedicationRequest when a site sends only orders).

| rule | destination | source | logic |
|---|---|---|---|
| DE1 | drug_concept_id | medicationCodeableConcept | mappings (RxNorm ingredients); 0 if unmapped or text only; other domains routed |
| DE2 | drug_exposure_start/end_date | effectiveDateTime / effectivePeriod (authoredOn for requests) | end = start if absent |
| DE3 | drug_type_concept_id | none | EHR (32817) |
| DE4 | dlm_clinical_event `chemotherapy` | medication meaning chemotherapy_drug | chemotherapy dates also come from drugs |
"""
from __future__ import annotations

from etl.transform.context import MapContext
from etl.transform.domain import Fact, route
from etl.transform.fhirdata import effective_dates, to_datetime


def row(fact: Fact, ctx: MapContext) -> tuple[str, int]:
    row_id = ctx.ids.id("drug_exposure", fact.key)
    ctx.add("drug_exposure", {
        "drug_exposure_id": row_id, "person_id": fact.person_id, "drug_concept_id": fact.concept_id,
        "drug_exposure_start_date": fact.start, "drug_exposure_end_date": fact.end or fact.start,
        "drug_exposure_start_datetime": to_datetime(fact.start_text),
        "drug_type_concept_id": ctx.codes.convention(fact.type_meaning),
        "drug_source_value": fact.source[:50], "drug_source_concept_id": 0, "route_concept_id": 0,
    })
    return "drug_exposure", row_id


def transform(administration: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(administration)
    start, end = effective_dates(administration, "effectiveDateTime", "effectivePeriod", "authoredOn")
    if person_id is None or start is None:
        ctx.warnings[f"{administration['resourceType']} without person or date (not mapped)"] += 1
        return
    kind = administration["resourceType"]
    mapping, source = ctx.codes.lookup(administration.get("medicationCodeableConcept"),
                                       f"{kind}.medicationCodeableConcept")
    key = f"{kind}/{administration['id']}"
    start_text = administration.get("effectiveDateTime") or (administration.get("effectivePeriod") or {}).get("start")
    table, row_id = route(Fact(key, person_id, mapping, source, start, end, start_text), "Drug", ctx)
    if mapping and mapping.meaning == "chemotherapy_drug":
        ctx.event(person_id, "chemotherapy", start, end, table, row_id, key)
