"""Foreign keys and indexes: a separate step after the bulk load (as OHDSI's DDL separates them).

- Indexes (every dialect): each table's `person_id`, `visit_occurrence_id` and main concept field
  (`<conceptPrefix>concept_id` from the table-level spec), the DLM tables' `person_id`/`lesion_id`, and
  `note_nlp.note_id` / `episode_event.episode_id` (a patient's rows are replaced by person).
- Foreign keys (PostgreSQL): every spec FK between clinical tables, plus the DLM tables' links to
  `person`, created DEFERRABLE INITIALLY DEFERRED so a transaction can replace parents and children in
  any order. FKs into the vocabulary (`concept`, `domain`, `vocabulary`, `concept_class`,
  `relationship`) need the full Athena vocabulary and are only created with `with_vocabulary=True`.
  SQLite cannot add constraints to existing tables: there the quality checks verify the same links.
- Planner statistics (`analyze`): refreshed after a bulk load, as after any bulk load into a database
  whose autovacuum has not seen it yet (the load's transaction is still open): without them PostgreSQL
  plans the next queries on an empty or unknown table (a lineage lookup by patient read all 8 million
  lineage rows at 50,000 patients).
"""
from __future__ import annotations

import csv
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from registry_schema.cdm import TABLE_SPEC, foreign_key_specs
from registry_schema.registry import SchemaNames

log = logging.getLogger(__name__)
VOCABULARY_TABLES = {"concept", "domain", "vocabulary", "concept_class", "relationship"}
DLM_PERSON_LINKS = ("dlm_lesion", "dlm_lesion_assessment", "dlm_lesion_handling", "dlm_clinical_event",
                    "dlm_lesion_outcome", "dlm_patient_course")
DLM_LESION_LINKS = ("dlm_lesion_assessment", "dlm_lesion_handling", "dlm_lesion_outcome")
ANALYZE_ROWS = 1000   # SQLite: rows of each index read by ANALYZE (PRAGMA analysis_limit; its docs suggest 100-1000)


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


@contextmanager
def indexes_deferred(conn: sa.Connection, table: sa.Table, keep: tuple[str, ...] = ()):
    """Bulk-load an empty `table` without its primary key and its indexes (but those on the columns `keep`),
    then build them at the end of the block, in the caller's transaction (PostgreSQL; elsewhere nothing
    changes). A key of random values (FHIR ids) costs a random leaf of its index per row once the index
    outgrows the database's cache: 85,000 lineage rows took 0.6 s in the primary key of a 1.5 million-row
    lineage, 0.09 s in the table alone, and one sort builds it at the end. A duplicate key fails the build,
    so uniqueness is still enforced before anything commits. If the block raises, nothing is rebuilt: the
    caller's transaction is rolled back, and the indexes with it. A user who does not own the table (the ETL
    writer role of registry_schema.roles) may not drop its indexes: it loads with them."""
    preparer = conn.dialect.identifier_preparer
    if conn.dialect.name != "postgresql" or not conn.execute(sa.text(
            "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = CAST(:name AS regclass)"),
            {"name": preparer.format_table(table)}).scalar():
        yield
        return
    primary = sa.inspect(conn).get_pk_constraint(table.name, schema=table.schema)
    indexes = [index for index in table.indexes if not set(index.columns.keys()) <= set(keep)]
    if primary.get("name"):
        conn.exec_driver_sql(f"ALTER TABLE {preparer.format_table(table)} DROP CONSTRAINT "
                             f"{preparer.quote(primary['name'])}")
    for index in indexes:
        index.drop(conn)
    yield
    if primary.get("name"):
        columns = ", ".join(preparer.quote(c) for c in primary["constrained_columns"])
        conn.exec_driver_sql(f"ALTER TABLE {preparer.format_table(table)} ADD CONSTRAINT "
                             f"{preparer.quote(primary['name'])} PRIMARY KEY ({columns})")
    for index in indexes:
        index.create(conn)


def analyze(conn: sa.Connection, tables: list[sa.Table]) -> None:
    """Refresh the planner statistics of `tables` in the caller's transaction (PostgreSQL: ANALYZE, which
    counts the transaction's own rows and commits or rolls back with it; SQLite: ANALYZE on a bounded sample
    of each index, `ANALYZE_ROWS`); other dialects are left to their own maintenance."""
    preparer = conn.dialect.identifier_preparer
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA analysis_limit = {ANALYZE_ROWS}")
    elif conn.dialect.name != "postgresql":
        return
    for table in tables:
        conn.exec_driver_sql(f"ANALYZE {preparer.format_table(table)}")


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
