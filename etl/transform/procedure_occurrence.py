"""PROCEDURE_OCCURRENCE from FHIR Procedure and from imaging DiagnosticReports (the imaging study).

| rule | destination | source | logic |
|---|---|---|---|
| PR1 | procedure_concept_id | Procedure.code / DiagnosticReport.code | mappings; 0 if unmapped; other domains routed (etl.transform.domain) |
| PR2 | procedure_date, procedure_end_date | performedDateTime / performedPeriod; effectiveDateTime | |
| PR3 | procedure_type_concept_id | none | EHR (32817); EHR radiology report (32841) for imaging studies |
| PR4 | dlm_clinical_event | code meaning chemotherapy, hepatectomy, ious, ce_ious | one event per procedure |
| PR5 | (index) | DiagnosticReport.result | remembers which report each Observation belongs to |
"""
from __future__ import annotations

from etl.transform.context import MapContext, ProcedureInfo, ReportInfo
from etl.transform.domain import Fact, route
from etl.transform.fhirdata import effective_dates, reference_ids, to_datetime

TIMELINE_EVENTS = {"chemotherapy", "hepatectomy", "ious", "ce_ious"}
IMAGING = {"imaging_ct", "imaging_mri"}


def row(fact: Fact, ctx: MapContext) -> tuple[str, int]:
    row_id = ctx.ids.id("procedure_occurrence", fact.key)
    ctx.add("procedure_occurrence", {
        "procedure_occurrence_id": row_id, "person_id": fact.person_id, "procedure_concept_id": fact.concept_id,
        "procedure_date": fact.start, "procedure_datetime": to_datetime(fact.start_text),
        "procedure_end_date": fact.end, "procedure_type_concept_id": ctx.codes.convention(fact.type_meaning),
        "procedure_source_value": fact.source[:50], "procedure_source_concept_id": 0,
    })
    return "procedure_occurrence", row_id


def from_procedure(procedure: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(procedure)
    start, end = effective_dates(procedure, "performedDateTime", "performedPeriod")
    if person_id is None or start is None:
        ctx.warnings["Procedure without person or date (not mapped)"] += 1
        return
    mapping, source = ctx.codes.lookup(procedure.get("code"), "Procedure.code")
    key = "Procedure/" + procedure["id"]
    start_text = procedure.get("performedDateTime") or (procedure.get("performedPeriod") or {}).get("start")
    table, row_id = route(Fact(key, person_id, mapping, source, start, end, start_text), "Procedure", ctx)
    meaning = mapping.meaning if mapping else None
    ctx.procedures[procedure["id"]] = ProcedureInfo(
        meaning, start, row_id if table == "procedure_occurrence" else None)
    if meaning in TIMELINE_EVENTS:
        ctx.event(person_id, meaning, start, end, table, row_id, key)


def from_diagnostic_report(report: dict, ctx: MapContext) -> None:
    """Imaging reports are studies (a procedure); every report indexes its result Observations."""
    person_id = ctx.person_id(report)
    if person_id is None:
        return
    start, _ = effective_dates(report, "effectiveDateTime", "effectivePeriod", "issued")
    mapping, source = ctx.codes.lookup(report.get("code"), "DiagnosticReport.code")
    meaning = mapping.meaning if mapping else None
    row_id = None
    if meaning in IMAGING and start is not None:
        fact = Fact("DiagnosticReport/" + report["id"], person_id, mapping, source, start, None,
                    report.get("effectiveDateTime"), "type_radiology_report")
        table, row_id = route(fact, "Procedure", ctx)
        row_id = row_id if table == "procedure_occurrence" else None
    ctx.reports[report["id"]] = ReportInfo(meaning, start, person_id, row_id)
    for observation_id in reference_ids(report.get("result"), "Observation"):
        ctx.report_of_observation[observation_id] = report["id"]
