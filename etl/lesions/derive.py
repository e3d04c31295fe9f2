"""Derive stage: read the loaded lesion facts, write dlm_lesion_outcome and dlm_patient_course.

Preconditions: the map stage has loaded dlm_lesion, dlm_lesion_assessment, dlm_lesion_handling,
dlm_clinical_event and observation_period. Runs in the caller's transaction.
"""
from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa

from etl.lesions.classify import LesionResult, classify_lesion
from etl.lesions.course import patient_course
from etl.lesions.regimen import counted_drugs, regimen
from etl.lesions.timeline import build_timeline


def _grouped(conn: sa.Connection, table: sa.Table, key: str) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for row in conn.execute(sa.select(table)).mappings():
        grouped[row[key]].append(dict(row))
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


def derive(conn: sa.Connection, tables: dict[str, sa.Table], window_months: float) -> dict[str, int]:
    """Classify every lesion and build every patient's course; returns counts per group."""
    lesions = _grouped(conn, tables["dlm_lesion"], "person_id")
    assessments = _grouped(conn, tables["dlm_lesion_assessment"], "lesion_id")
    handling = _grouped(conn, tables["dlm_lesion_handling"], "lesion_id")
    events = _grouped(conn, tables["dlm_clinical_event"], "person_id")
    period = tables["observation_period"]
    last_contact = dict(conn.execute(sa.select(period.c.person_id,
                                               sa.func.max(period.c.observation_period_end_date))
                                     .group_by(period.c.person_id)).all())
    drugs = _chemotherapy_drugs(conn, tables)
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
    for name, rows in (("dlm_lesion_outcome", outcome_rows), ("dlm_patient_course", course_rows)):
        conn.execute(tables[name].delete())
        if rows:
            conn.execute(tables[name].insert(), rows)
    return dict(counts)
