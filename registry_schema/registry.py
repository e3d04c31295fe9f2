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
    """Create schemas and tables that do not exist yet (safe to call on every run)."""
    with engine.begin() as conn:
        for name in sorted({s for s in (schemas.cdm, schemas.dlm, schemas.staging) if s}):
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{name}"'))
        metadata.create_all(conn, checkfirst=True)
