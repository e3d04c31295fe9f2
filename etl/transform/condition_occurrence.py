"""CONDITION_OCCURRENCE from FHIR Condition; recurrences also become DLM time-line events.

| rule | destination | source | logic |
|---|---|---|---|
| C1 | condition_concept_id | Condition.code | mappings; 0 if unmapped (source value kept); other domains routed (etl.transform.domain) |
| C2 | condition_start_date | onsetDateTime / onsetPeriod.start / recordedDate | first present |
| C3 | condition_end_date | abatementDateTime | |
| C4 | condition_type_concept_id | none | EHR (32817) |
| C5 | condition_status_source_value | clinicalStatus code | |
| C6 | dlm_clinical_event `recurrence` | clinicalStatus meaning recurrence_status | date = C2 |
"""
from __future__ import annotations

from etl.transform.context import MapContext
from etl.transform.domain import Fact, route
from etl.transform.fhirdata import effective_dates, to_date, to_datetime


def row(fact: Fact, ctx: MapContext) -> tuple[str, int]:
    row_id = ctx.ids.id("condition_occurrence", fact.key)
    ctx.add("condition_occurrence", {
        "condition_occurrence_id": row_id, "person_id": fact.person_id, "condition_concept_id": fact.concept_id,
        "condition_start_date": fact.start, "condition_start_datetime": to_datetime(fact.start_text),
        "condition_end_date": fact.end, "condition_type_concept_id": ctx.codes.convention(fact.type_meaning),
        "condition_source_value": fact.source[:50], "condition_source_concept_id": 0,
        "condition_status_source_value": fact.extra.get("status"),
    })
    return "condition_occurrence", row_id


def transform(condition: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(condition)
    start, _ = effective_dates(condition, "onsetDateTime", "onsetPeriod", "recordedDate")
    if person_id is None or start is None:
        ctx.warnings["Condition without person or onset date (not mapped)"] += 1
        return
    mapping, source = ctx.codes.lookup(condition.get("code"), "Condition.code")
    key = "Condition/" + condition["id"]
    status = ((condition.get("clinicalStatus") or {}).get("coding") or [{}])[0]
    fact = Fact(key, person_id, mapping, source, start, to_date(condition.get("abatementDateTime")),
                condition.get("onsetDateTime"), extra={"status": (status.get("code") or "")[:50] or None})
    table, row_id = route(fact, "Condition", ctx)
    if ctx.codes.meaning(condition.get("clinicalStatus")) == "recurrence_status":
        ctx.event(person_id, "recurrence", start, None, table, row_id, key)
