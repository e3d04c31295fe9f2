"""Map: staged FHIR -> OMOP CDM rows and DLM extension rows. The load order is declared here, once.

Preconditions: staging (`fhir_resource`) holds the cohort's de-identified resources; `dlm_lineage`
exists. Each module maps one OMOP table family and states its rules in its docstring.
"""
from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa

from etl.lesions import facts, identity, text as text_facts
from etl.progress import Progress
from etl.transform import condition_occurrence, drug_exposure, episode, note, observation_period, person, procedure_occurrence
from etl.transform.domain import Fact, route
from etl.transform.context import IdAssigner, MapContext
from etl.transform.fhirdata import effective_dates, first_reference_id, observation_value
from etl.vocabulary import UNMAPPED_DOMAIN, CodeMap

REPORT_TYPE = {"imaging_ct": "type_radiology_report", "imaging_mri": "type_radiology_report",
               "pathology_report": "type_pathology_report"}


def _observation(obs: dict, ctx: MapContext) -> None:
    if ctx.person_id(obs) is None:
        return
    mapping, source = ctx.codes.lookup(obs.get("code"), "Observation.code")
    value = observation_value(obs, ctx.codes)
    report_id = (ctx.report_of_observation.get(obs["id"])
                 or first_reference_id(obs.get("derivedFrom"), "DiagnosticReport"))
    report = ctx.reports.get(report_id or "")
    procedure = ctx.procedures.get(first_reference_id(obs.get("partOf"), "Procedure") or "")
    when = (effective_dates(obs, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")[0]
            or (report.date if report else None) or (procedure.date if procedure else None))
    if when is None:
        ctx.warnings["Observation without a date (not mapped)"] += 1
        return
    type_meaning = REPORT_TYPE.get(report.meaning if report else "", "type_ehr")
    study_id = (report.procedure_occurrence_id if report else None) or (
        procedure.procedure_occurrence_id if procedure else None)
    fact = Fact("Observation/" + obs["id"], ctx.person_id(obs), mapping, source, when, None,
                obs.get("effectiveDateTime"), type_meaning, value, study_id)
    route(fact, UNMAPPED_DOMAIN, ctx)
    meaning = mapping.meaning if mapping else None
    if meaning in facts.LESION_FACTS:
        facts.record_fact(obs, meaning, value, report_id, when, ctx)
    facts.record_protocol(meaning, report_id, value, ctx)


def _diagnostic_report(report: dict, ctx: MapContext) -> None:
    procedure_occurrence.from_diagnostic_report(report, ctx)
    note.from_diagnostic_report(report, ctx)


TRANSFORMS = {
    "Patient": person.transform,
    "Condition": condition_occurrence.transform,
    "BodyStructure": identity.transform,
    "Procedure": procedure_occurrence.from_procedure,
    "MedicationAdministration": drug_exposure.transform,
    "MedicationRequest": drug_exposure.transform,
    "DiagnosticReport": _diagnostic_report,
    "Observation": _observation,
    "DocumentReference": note.from_document_reference,
}
LOAD_ORDER = tuple(TRANSFORMS)
SUPPORTED_TYPES = frozenset(LOAD_ORDER)


def map_staging(conn: sa.Connection, tables: dict[str, sa.Table], codes: CodeMap,
                show_progress: bool | None = None, run_date: dt.date | None = None) -> MapContext:
    """Map every staged resource, in load order; returns the rows per table and the new lineage."""
    ctx = MapContext(codes, IdAssigner(conn, tables["dlm_lineage"]), run_date=run_date or dt.date.today())
    staging = tables["fhir_resource"]
    progress = Progress("mapped resources", show_progress)
    for resource_type in LOAD_ORDER:
        query = (sa.select(staging.c.resource_json, staging.c.version_id)
                 .where(staging.c.resource_type == resource_type).order_by(staging.c.resource_id))
        for text, version in conn.execute(query.execution_options(yield_per=5000)):
            ctx.ids.version = version
            TRANSFORMS[resource_type](json.loads(text), ctx)
            progress.step()
    ctx.ids.version = None  # rows derived after the pass (periods, episodes) carry no FHIR version
    progress.done()
    facts.finalize(ctx)
    text_facts.finalize(ctx)  # after the structured facts: text is used only where they are missing
    observation_period.build(ctx)
    episode.build(ctx)
    return ctx
