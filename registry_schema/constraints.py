"""Foreign keys and indexes: a separate step after the bulk load (as OHDSI's DDL separates them).

- Indexes (every dialect): each table's `person_id`, `visit_occurrence_id` and main concept field
  (`<conceptPrefix>concept_id` from the table-level spec), the DLM tables' `person_id`/`lesion_id`, and
  `note_nlp.note_id` / `episode_event.episode_id` (a patient's rows are replaced by person).
- Foreign keys (PostgreSQL): every spec FK between clinical tables, plus the DLM tables' links to
  `person`, created DEFERRABLE INITIALLY DEFERRED so a transaction can replace parents and children in
  any order. FKs into the vocabulary (`concept`, `domain`, `vocabulary`, `concept_class`,
  `relationship`) need the full Athena vocabulary and are only created with `with_vocabulary=True`.
  SQLite cannot add constraints to existing tables: there the quality checks verify the same links.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass

import sqlalchemy as sa

from registry_schema.cdm import TABLE_SPEC, foreign_key_specs
from registry_schema.registry import SchemaNames

log = logging.getLogger(__name__)
VOCABULARY_TABLES = {"concept", "domain", "vocabulary", "concept_class", "relationship"}
DLM_PERSON_LINKS = ("dlm_lesion", "dlm_lesion_assessment", "dlm_lesion_handling", "dlm_clinical_event",
                    "dlm_lesion_outcome", "dlm_patient_course")
DLM_LESION_LINKS = ("dlm_lesion_assessment", "dlm_lesion_handling", "dlm_lesion_outcome")


@dataclass(frozen=True)
class ForeignKey:
    table: str
    column: str
    target_table: str
    target_column: str

    @property
    def name(self) -> str:
        return f"fk_{self.table}_{self.column}"[:63]


def foreign_keys(with_vocabulary: bool = False) -> list[ForeignKey]:
    keys = [ForeignKey(f.table, f.field, f.fk_table, f.fk_field) for f in foreign_key_specs()
            if with_vocabulary or f.fk_table not in VOCABULARY_TABLES]
    keys += [ForeignKey(t, "person_id", "person", "person_id") for t in DLM_PERSON_LINKS]
    keys += [ForeignKey(t, "lesion_id", "dlm_lesion", "lesion_id") for t in DLM_LESION_LINKS]
    return keys


def index_columns(tables: dict[str, sa.Table]) -> list[tuple[str, str]]:
    """(table, column) pairs to index."""
    with TABLE_SPEC.open(newline="", encoding="utf-8") as handle:
        prefixes = {row["cdmTableName"].lower(): row["conceptPrefix"].lower() for row in csv.DictReader(handle)}
    wanted = []
    for name, table in tables.items():
        # note_id / episode_id: NOTE_NLP and EPISODE_EVENT rows are replaced with their note / episode.
        candidates = ["person_id", "visit_occurrence_id", "lesion_id", "note_id", "episode_id"]
        prefix = prefixes.get(name, "na")
        if prefix != "na":
            candidates.append(f"{prefix}concept_id")
        for column in candidates:
            if column in table.c and not table.c[column].primary_key:
                wanted.append((name, column))
    return wanted


def create_indexes(conn: sa.Connection, tables: dict[str, sa.Table]) -> int:
    """Create the missing indexes of `index_columns` in the caller's transaction; returns how many.

    The load calls this after its bulk inserts and before the audit, whose per-person checks need them."""
    inspector = sa.inspect(conn)
    created = 0
    for name, column in index_columns(tables):
        table = tables[name]
        existing = {i["name"] for i in inspector.get_indexes(name, schema=table.schema)}
        index_name = f"idx_{name}_{column}"[:63]
        if index_name not in existing:
            sa.Index(index_name, table.c[column]).create(conn)
            created += 1
    return created


def apply_constraints(engine: sa.Engine, schemas: SchemaNames, tables: dict[str, sa.Table],
                      with_vocabulary: bool = False) -> dict[str, int]:
    """Create missing indexes (and, on PostgreSQL, foreign keys). Idempotent; returns what it created."""
    created = {"indexes": 0, "foreign_keys": 0}
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        created["indexes"] = create_indexes(conn, tables)
        if engine.dialect.name != "postgresql":
            log.info("%s cannot add foreign keys to existing tables; the quality checks verify them",
                     engine.dialect.name)
            return created
        quote = conn.dialect.identifier_preparer.quote
        for key in foreign_keys(with_vocabulary):
            table, target = tables[key.table], tables[key.target_table]
            existing = {fk["name"] for fk in inspector.get_foreign_keys(key.table, schema=table.schema)}
            if key.name in existing:
                continue
            conn.execute(sa.text(
                f"ALTER TABLE {quote(table.schema)}.{quote(key.table)} ADD CONSTRAINT {quote(key.name)} "
                f"FOREIGN KEY ({quote(key.column)}) REFERENCES {quote(target.schema)}.{quote(key.target_table)} "
                f"({quote(key.target_column)}) DEFERRABLE INITIALLY DEFERRED"))
            created["foreign_keys"] += 1
    return created
