"""Assemble the whole registry schema for one database and create it.

PostgreSQL keeps the CDM, the DLM extension and staging in separate schemas (`cdm`, `dlm`,
`staging`) so that access can be granted per schema; SQLite has no schemas and uses one namespace.
"""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from registry_schema.cdm import cdm_tables
from registry_schema.dlm import dlm_tables, staging_tables


@dataclass(frozen=True)
class SchemaNames:
    cdm: str | None = None
    dlm: str | None = None
    staging: str | None = None

    @classmethod
    def for_dialect(cls, dialect_name: str) -> "SchemaNames":
        if dialect_name == "sqlite":
            return cls()
        return cls(cdm="cdm", dlm="dlm", staging="staging")


def build_metadata(schemas: SchemaNames) -> tuple[sa.MetaData, dict[str, sa.Table]]:
    """All registry tables in one MetaData, and a name -> Table index."""
    metadata = sa.MetaData()
    tables = {}
    tables.update(cdm_tables(metadata, schemas.cdm))
    tables.update(dlm_tables(metadata, schemas.dlm))
    tables.update(staging_tables(metadata, schemas.staging))
    return metadata, tables


def create_registry(engine: sa.Engine, schemas: SchemaNames, metadata: sa.MetaData) -> None:
    """Create schemas and tables that do not exist yet (safe to call on every run), and add the nullable
    columns a newer release added to an existing table, so an upgraded site keeps its registry."""
    with engine.begin() as conn:
        for name in sorted({s for s in (schemas.cdm, schemas.dlm, schemas.staging) if s}):
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{name}"'))
        metadata.create_all(conn, checkfirst=True)
        add_missing_columns(conn, metadata)
        add_missing_indexes(conn, metadata)


def add_missing_columns(conn: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """ALTER TABLE ... ADD COLUMN for every nullable column a table lacks; returns `table.column` added.

    A missing NOT NULL column cannot be added to rows that exist; that is an error naming the column.
    """
    inspector = sa.inspect(conn)
    preparer = conn.dialect.identifier_preparer
    added = []
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"registry table {table.name} lacks NOT NULL column {column.name}; "
                                   "rebuild the registry")
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {preparer.format_table(table)} "
                                 f"ADD COLUMN {preparer.format_column(column)} {kind}"))
            added.append(f"{table.name}.{column.name}")
    return added


def add_missing_indexes(conn: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """CREATE INDEX IF NOT EXISTS for every index declared on a table (create_all skips existing tables)."""
    inspector = sa.inspect(conn)
    added = []
    for table in metadata.sorted_tables:
        if not table.indexes:
            continue
        present = {i["name"] for i in inspector.get_indexes(table.name, schema=table.schema)}
        for index in sorted(table.indexes, key=lambda i: i.name):
            if index.name not in present:
                conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
                added.append(index.name)
    return added
