"""Map: staged FHIR -> OMOP CDM rows and DLM extension rows. The load order is declared here, once.

Preconditions: staging (`fhir_resource`) holds the cohort's de-identified resources; `dlm_lineage`
exists. Each module maps one OMOP table family and states its rules in its docstring.

Every row the registry derives belongs to one patient, so mapping runs patient by patient (a patient's
resources in load order, then its lesion linking, observation period and episodes) over batches of
patients; etl.load writes each batch and etl.transform.patients decides which patients a run maps.
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa

from etl.lesions import facts, identity, text as text_facts
from etl.nlp.reader import ReportReader
from etl.progress import Progress
from etl.transform import condition_occurrence, drug_exposure, episode, note, observation_period, person, procedure_occurrence
from etl.transform.domain import Fact, route
from etl.transform.context import IdAssigner, MapContext
from etl.transform.fhirdata import effective_dates, first_reference_id, observation_value
from etl.transform.patients import MapNotes
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
ORDER = {resource_type: position for position, resource_type in enumerate(LOAD_ORDER)}


@dataclass
class MappedPatient:
    key: str                    # keyed pseudonym (staging patient_key)
    person_id: int | None       # None when the Patient gave no person row (e.g. no usable birthDate)
    notes: MapNotes


@dataclass
class MappedBatch:
    """The rows of a batch of patients, the lineage they added, and what each patient reported."""

    rows: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    patients: list[MappedPatient] = field(default_factory=list)
    lineage: list[dict] = field(default_factory=list)
    version_changes: list[dict] = field(default_factory=list)
    resources: int = 0


def map_patient(key: str, resources: list[tuple[str, str | None, str]], codes: CodeMap, ids: IdAssigner,
                run_date: dt.date, reader: ReportReader | None = None) -> MapContext:
    """Map one patient's staged resources, (type, versionId, JSON) in load order, and link its lesions.

    Every row derived here belongs to this patient: references are followed within the patient only.
    `reader` reads the report texts (default: in this process).
    """
    ctx = MapContext(codes, ids, run_date=run_date, store_note_text=note.store_note_text(),
                     reader=reader or ReportReader(0))
    ids.patient = key
    for resource_type, version, text in resources:
        ids.version = version
        TRANSFORMS[resource_type](json.loads(text), ctx)
    ids.version = None  # rows derived after the pass (periods, episodes) carry no FHIR version
    facts.finalize(ctx)
    text_facts.finalize(ctx)  # after the structured facts: text is used only where they are missing
    observation_period.build(ctx)
    episode.build(ctx)
    return ctx


def map_batch(conn: sa.Connection, tables: dict[str, sa.Table], codes: CodeMap, ids: IdAssigner,
              patient_keys: list[str], run_date: dt.date, progress: Progress | None = None,
              reader: ReportReader | None = None) -> MappedBatch:
    """Map the staged resources of these patients (a batch: memory is bounded by its size), patient by patient.

    Preconditions: staging (`fhir_resource`) and `dlm_lineage` exist. `ids` is loaded with the batch's lineage
    here; `reader` reads the report texts (give it `reader_jobs` of the batch ahead of time to read them in
    worker processes). Returns the batch's rows; nothing is written.
    """
    ids.load(patient_keys)
    staging = tables["fhir_resource"]
    batch = MappedBatch()
    query = (sa.select(staging.c.patient_key, staging.c.resource_type, staging.c.resource_id, staging.c.version_id,
                       staging.c.resource_json)
             .where(staging.c.patient_key.in_(patient_keys)).order_by(staging.c.patient_key))
    current: str | None = None
    resources: list[tuple] = []

    def finish() -> None:
        resources.sort(key=lambda r: (ORDER[r[0]], r[1]))
        saved, codes.unmapped = codes.unmapped, Counter()
        try:
            ctx = map_patient(current, [(t, v, text) for t, _, v, text in resources], codes, ids, run_date, reader)
            notes = MapNotes(dict(ctx.warnings), codes.unmapped)
        finally:
            codes.unmapped = saved
        for table, rows in ctx.rows.items():
            batch.rows[table].extend(rows)
        batch.patients.append(MappedPatient(current, ctx.persons.get(current), notes))
        batch.resources += len(resources)

    for key, resource_type, resource_id, version, text in conn.execute(query.execution_options(yield_per=2000)):
        if key != current:
            if current is not None:
                finish()
            current, resources = key, []
        if resource_type in ORDER:
            resources.append((resource_type, resource_id, version, text))
            if progress:
                progress.step()
    if current is not None:
        finish()
    batch.lineage, batch.version_changes = ids.new, ids.version_changes
    return batch


NOTE_TYPES = ("DiagnosticReport", "DocumentReference")


def reader_jobs(conn: sa.Connection, tables: dict[str, sa.Table], codes: CodeMap, patient_keys: list[str]) -> list:
    """The report texts mapping these patients will read, as etl.nlp.reader jobs (text, kind, lang)."""
    staging = tables["fhir_resource"]
    query = (sa.select(staging.c.resource_json)
             .where(staging.c.patient_key.in_(patient_keys), staging.c.resource_type.in_(NOTE_TYPES)))
    jobs = []
    for (text,) in conn.execute(query.execution_options(yield_per=2000)):
        job = note.reader_job(json.loads(text), codes)
        if job is not None:
            jobs.append(job)
    return jobs
