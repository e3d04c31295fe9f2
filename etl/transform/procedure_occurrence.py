"""PROCEDURE_OCCURRENCE from FHIR Procedure and from imaging DiagnosticReports (the imaging study).

| rule | destination | source | logic |
|---|---|---|---|
| PR1 | procedure_concept_id | Procedure.code / DiagnosticReport.code | mappings; 0 if unmapped |
| PR2 | procedure_date, procedure_end_date | performedDateTime / performedPeriod; effectiveDateTime | |
| PR3 | procedure_type_concept_id | none | EHR (32817); EHR radiology report (32841) for imaging studies |
| PR4 | dlm_clinical_event | code meaning chemotherapy, hepatectomy, ious, ce_ious | one event per procedure |
| PR5 | (index) | DiagnosticReport.result | remembers which report each Observation belongs to |
"""
from __future__ import annotations

from etl.transform.context import MapContext, ProcedureInfo, ReportInfo
from etl.transform.fhirdata import effective_dates, reference_ids, to_datetime

TIMELINE_EVENTS = {"chemotherapy", "hepatectomy", "ious", "ce_ious"}
IMAGING = {"imaging_ct", "imaging_mri"}


def _row(ctx: MapContext, key: str, person_id: int, concept_id: int, source: str, start, end, start_text,
         type_meaning: str) -> int:
    row_id = ctx.ids.id("procedure_occurrence", key)
    ctx.add("procedure_occurrence", {
        "procedure_occurrence_id": row_id, "person_id": person_id, "procedure_concept_id": concept_id,
        "procedure_date": start, "procedure_datetime": to_datetime(start_text), "procedure_end_date": end,
        "procedure_type_concept_id": ctx.codes.convention(type_meaning),
        "procedure_source_value": source[:50], "procedure_source_concept_id": 0,
    })
    return row_id


def from_procedure(procedure: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(procedure)
    start, end = effective_dates(procedure, "performedDateTime", "performedPeriod")
    if person_id is None or start is None:
        ctx.warnings["Procedure without person or date (not mapped)"] += 1
        return
    mapping, source = ctx.codes.lookup(procedure.get("code"), "Procedure.code")
    key = "Procedure/" + procedure["id"]
    start_text = procedure.get("performedDateTime") or (procedure.get("performedPeriod") or {}).get("start")
    row_id = _row(ctx, key, person_id, mapping.concept_id if mapping else 0, source, start, end, start_text,
                  "type_ehr")
    meaning = mapping.meaning if mapping else None
    ctx.procedures[procedure["id"]] = ProcedureInfo(meaning, start, row_id)
    if meaning in TIMELINE_EVENTS:
        ctx.event(person_id, meaning, start, end, "procedure_occurrence", row_id, key)


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
        row_id = _row(ctx, "DiagnosticReport/" + report["id"], person_id, mapping.concept_id, source, start,
                      None, report.get("effectiveDateTime"), "type_radiology_report")
    ctx.reports[report["id"]] = ReportInfo(meaning, start, person_id, row_id)
    for observation_id in reference_ids(report.get("result"), "Observation"):
        ctx.report_of_observation[observation_id] = report["id"]
