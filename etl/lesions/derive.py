"""Derive stage: from the lesion facts, write dlm_lesion_outcome and dlm_patient_course.

Everything derived belongs to one patient, so the load derives each batch of patients from the rows it
has just mapped; `derive` without rows re-derives the whole registry from its tables.
Preconditions (whole registry): the map stage has loaded dlm_lesion, dlm_lesion_assessment,
dlm_lesion_handling, dlm_clinical_event, drug_exposure and observation_period. Runs in the caller's transaction.
"""
from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa

from etl import bulk
from etl.lesions.classify import LesionResult, classify_lesion
from etl.lesions.course import patient_course
from etl.lesions.regimen import counted_drugs, regimen
from etl.lesions.timeline import build_timeline


def _grouped(conn: sa.Connection, table: sa.Table, key: str) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for row in conn.execute(sa.select(table)).mappings():
        grouped[row[key]].append(dict(row))
    return grouped


def _group(rows: list[dict], key: str) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped


def _chemotherapy_drugs(conn: sa.Connection, tables: dict[str, sa.Table]) -> dict[int, list[tuple]]:
    """person_id -> (start date, drug_concept_id) of every drug exposure behind a chemotherapy event."""
    event, drug = tables["dlm_clinical_event"], tables["drug_exposure"]
    query = (sa.select(event.c.person_id, event.c.start_date, drug.c.drug_concept_id)
             .join(drug, drug.c.drug_exposure_id == event.c.omop_id)
             .where(event.c.event == "chemotherapy", event.c.omop_table == "drug_exposure"))
    grouped: dict[int, list[tuple]] = defaultdict(list)
    for person_id, start, concept in conn.execute(query):
        grouped[person_id].append((start, concept))
    return grouped


def derive(conn: sa.Connection, tables: dict[str, sa.Table], window_months: float,
           rows: dict[str, list[dict]] | None = None) -> dict[str, int]:
    """Classify lesions and build patient courses; returns counts per group.

    With `rows` (one batch's mapped rows: dlm_lesion, dlm_lesion_assessment, dlm_lesion_handling,
    dlm_clinical_event, observation_period, drug_exposure), derive those patients from the rows in memory
    and insert their outcome and course rows (their old ones were deleted with their other rows). Without,
    re-derive every patient from the loaded tables, replacing both tables.
    """
    if rows is None:
        lesions = _grouped(conn, tables["dlm_lesion"], "person_id")
        assessments = _grouped(conn, tables["dlm_lesion_assessment"], "lesion_id")
        handling = _grouped(conn, tables["dlm_lesion_handling"], "lesion_id")
        events = _grouped(conn, tables["dlm_clinical_event"], "person_id")
        period = tables["observation_period"]
        last_contact = dict(conn.execute(sa.select(period.c.person_id,
                                                   sa.func.max(period.c.observation_period_end_date))
                                         .group_by(period.c.person_id)).all())
        drugs = _chemotherapy_drugs(conn, tables)
    else:
        lesions = _group(rows.get("dlm_lesion", []), "person_id")
        assessments = _group(rows.get("dlm_lesion_assessment", []), "lesion_id")
        handling = _group(rows.get("dlm_lesion_handling", []), "lesion_id")
        events = _group(rows.get("dlm_clinical_event", []), "person_id")
        last_contact = {}
        for period in rows.get("observation_period", []):
            end = period["observation_period_end_date"]
            last_contact[period["person_id"]] = max(end, last_contact.get(period["person_id"], end))
        concept = {d["drug_exposure_id"]: d["drug_concept_id"] for d in rows.get("drug_exposure", [])}
        drugs = defaultdict(list)
        for event in rows.get("dlm_clinical_event", []):
            if event["event"] == "chemotherapy" and event["omop_table"] == "drug_exposure" and event["omop_id"] in concept:
                drugs[event["person_id"]].append((event["start_date"], concept[event["omop_id"]]))
    outcome_rows, course_rows = [], []
    counts: dict[str, int] = defaultdict(int)
    for person_id in sorted(set(lesions) | set(events)):
        line = build_timeline(events.get(person_id, []), last_contact.get(person_id))
        results: list[LesionResult] = []
        for lesion in lesions.get(person_id, []):
            result = classify_lesion(assessments.get(lesion["lesion_id"], []), handling.get(lesion["lesion_id"], []),
                                     line, window_months)
            results.append(result)
            counts[result.dlm_group] += 1
            outcome_rows.append({"lesion_id": lesion["lesion_id"], "person_id": person_id,
                                 "followup_window_months": window_months, **vars(result)})
        backbone, targeted = regimen(counted_drugs(drugs.get(person_id, []), line.chemo_start,
                                                   line.first_hepatectomy))
        course_rows.append({"person_id": person_id, **patient_course(line, results),
                            "chemo_regimen": backbone, "chemo_targeted_agent": targeted})
    for name, new in (("dlm_lesion_outcome", outcome_rows), ("dlm_patient_course", course_rows)):
        if rows is None:
            conn.execute(tables[name].delete())
        bulk.insert_rows(conn, tables[name], new)
    return dict(counts)
