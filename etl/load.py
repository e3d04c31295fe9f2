"""Load mapped rows, batch by batch, inside the caller's transaction.

Every registry row belongs to one patient except the vocabulary and provenance tables (GLOBAL_TABLES),
so a patient's rows are replaced as a unit: deleted by person (NOTE_NLP and EPISODE_EVENT through their
note and episode), then the batch's new rows inserted. A full load deletes every patient's rows once up
front. Ids come from the lineage table, so a re-run writes identical rows. Inserts are bulk (etl.bulk: COPY on
PostgreSQL).
"""
from __future__ import annotations

import sqlalchemy as sa

from etl import bulk
from registry_schema.cdm import CHILD_TABLES

LOOKUP_CHUNK = 500
# Rows of one patient, found by person_id.
PERSON_TABLES = (
    "person", "death", "condition_occurrence", "procedure_occurrence", "drug_exposure", "measurement",
    "observation", "note", "observation_period", "episode", "dlm_lesion", "dlm_lesion_assessment",
    "dlm_lesion_handling", "dlm_text_comparison", "dlm_clinical_event",
)
GLOBAL_TABLES = ("source_to_concept_map", "concept", "cdm_source")
DERIVED_TABLES = ("dlm_lesion_outcome", "dlm_patient_course")  # written by etl.lesions.derive
REPLACED_TABLES = (
    "person", "death", "condition_occurrence", "procedure_occurrence", "drug_exposure", "measurement",
    "observation", "note", "note_nlp", "observation_period", "episode", "episode_event", "source_to_concept_map",
    "concept", "cdm_source", "dlm_lesion", "dlm_lesion_assessment", "dlm_lesion_handling", "dlm_text_comparison", "dlm_clinical_event",
)
MAPPED_TABLES = tuple(t for t in REPLACED_TABLES if t not in GLOBAL_TABLES)


def delete_all_patients(conn: sa.Connection, tables: dict[str, sa.Table]) -> None:
    """Empty every patient-level table (a full load), the derived tables included."""
    for name in (*CHILD_TABLES, *PERSON_TABLES, *DERIVED_TABLES):
        conn.execute(tables[name].delete())


def delete_persons(conn: sa.Connection, tables: dict[str, sa.Table], person_ids: list[int]) -> None:
    """Delete every row of these persons, the derived tables included (indexes on person_id, note_id and
    episode_id keep this proportional to the rows deleted)."""
    for start in range(0, len(person_ids), LOOKUP_CHUNK):
        chunk = person_ids[start:start + LOOKUP_CHUNK]
        for name, (column, parent_name, parent_id) in CHILD_TABLES.items():
            parent = tables[parent_name]
            parents = sa.select(parent.c[parent_id]).where(parent.c.person_id.in_(chunk))
            conn.execute(tables[name].delete().where(tables[name].c[column].in_(parents)))
        for name in (*PERSON_TABLES, *DERIVED_TABLES):
            conn.execute(tables[name].delete().where(tables[name].c.person_id.in_(chunk)))


def insert_rows(conn: sa.Connection, tables: dict[str, sa.Table], rows: dict[str, list[dict]]) -> dict[str, int]:
    """Insert mapped rows (their tables must be REPLACED_TABLES); returns the rows inserted per table."""
    unknown = set(rows) - set(REPLACED_TABLES)
    if unknown:
        raise ValueError(f"rows for tables that are not replaced by a load: {sorted(unknown)}")
    counts = {}
    for name in REPLACED_TABLES:
        batch = rows.get(name) or []
        bulk.insert_rows(conn, tables[name], batch)
        counts[name] = len(batch)
    return counts


def replace_global_rows(conn: sa.Connection, tables: dict[str, sa.Table], rows: dict[str, list[dict]]) -> None:
    """Replace the tables that belong to no patient (vocabulary subset, source_to_concept_map, cdm_source)."""
    unknown = set(rows) - set(GLOBAL_TABLES)
    if unknown:
        raise ValueError(f"not global tables: {sorted(unknown)}")
    for name in GLOBAL_TABLES:
        conn.execute(tables[name].delete())
    insert_rows(conn, tables, rows)


def write_lineage(conn: sa.Connection, tables: dict[str, sa.Table], lineage: list[dict],
                  version_changes: list[dict] = (), patient_keys: list[str] | None = None) -> None:
    """Add new lineage rows and record changed FHIR versions (`patient_keys`: the patients whose lineage
    holds every changed key, as the batch's lineage was read by patient)."""
    lineage_table = tables["dlm_lineage"]
    bulk.insert_rows(conn, lineage_table, lineage)
    bulk.update_rows(conn, lineage_table, ["omop_table", "source_key"], list(version_changes),
                     within=("patient_key", patient_keys) if patient_keys is not None else None)


def claimed_elsewhere(conn: sa.Connection, tables: dict[str, sa.Table], lineage: list[dict]) -> list[dict]:
    """The rows of `lineage` (new to their patient) whose key the lineage already holds under another patient:
    a resource that moved to another patient. Returns them with the patient they now belong to."""
    table = tables["dlm_lineage"]
    by_table: dict[str, dict[str, dict]] = {}
    for row in lineage:
        by_table.setdefault(row["omop_table"], {})[row["source_key"]] = row
    found = []
    for name, rows in by_table.items():
        keys = list(rows)
        for start in range(0, len(keys), LOOKUP_CHUNK):
            query = sa.select(table.c.source_key).where(table.c.omop_table == name,
                                                        table.c.source_key.in_(keys[start:start + LOOKUP_CHUNK]))
            found += [rows[key] for (key,) in conn.execute(query)]
    return found


def move_lineage(conn: sa.Connection, tables: dict[str, sa.Table], moved: list[dict]) -> None:
    """Give existing lineage rows to the patient their resource now belongs to (their ids are kept)."""
    table = tables["dlm_lineage"]
    conn.execute(table.update().where(table.c.omop_table == sa.bindparam("t"), table.c.source_key == sa.bindparam("k"))
                 .values(patient_key=sa.bindparam("p")),
                 [{"t": r["omop_table"], "k": r["source_key"], "p": r["patient_key"]} for r in moved])


def backfill_lineage_patients(conn: sa.Connection, tables: dict[str, sa.Table]) -> int:
    """Registries made before lineage knew its patients: set `patient_key` from the staged resource each
    source key names (`Type/id` or `Type/id#part`); '' when that resource is no longer staged. Returns the
    rows updated (0, at once, on a current registry)."""
    lineage, staging = tables["dlm_lineage"], tables["fhir_resource"]
    if conn.execute(sa.select(lineage.c.omop_id).where(lineage.c.patient_key.is_(None)).limit(1)).first() is None:
        return 0
    key = lineage.c.source_key
    if conn.dialect.name == "postgresql":
        resource = sa.func.split_part(key, "#", 1)
        resource_type = sa.func.split_part(resource, "/", 1)
        resource_id = sa.func.substr(resource, sa.func.strpos(resource, "/") + 1)
    else:
        hash_at = sa.func.instr(key + "#", "#")
        resource = sa.func.substr(key, 1, hash_at - 1)
        resource_type = sa.func.substr(resource, 1, sa.func.instr(resource, "/") - 1)
        resource_id = sa.func.substr(resource, sa.func.instr(resource, "/") + 1)
    owner = (sa.select(staging.c.patient_key)
             .where(staging.c.resource_type == resource_type, staging.c.resource_id == resource_id)
             .scalar_subquery())
    result = conn.execute(lineage.update().where(lineage.c.patient_key.is_(None))
                          .values(patient_key=sa.func.coalesce(owner, "")))
    return result.rowcount


def table_counts(conn: sa.Connection, tables: dict[str, sa.Table]) -> dict[str, int]:
    """Rows per REPLACED_TABLE as the transaction sees them."""
    return {name: conn.execute(sa.select(sa.func.count()).select_from(tables[name])).scalar()
            for name in REPLACED_TABLES}
