"""Open (and create if needed) a registry database by URL; the same code path for SQLite and PostgreSQL."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from registry_schema import SchemaNames, build_metadata, create_registry, create_views


@dataclass
class Registry:
    engine: sa.Engine
    schemas: SchemaNames
    tables: dict[str, sa.Table]

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and reports."""
        return self.engine.url.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_registry(url: str) -> Registry:
    """Connect, create missing schemas, tables and views. Raises sa.exc.OperationalError if unreachable."""
    # pre-ping: after the database dropped the connections (restart, failover), the run's closing
    # bookkeeping and the next step get a fresh connection instead of a dead one
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    schemas = SchemaNames.for_dialect(engine.dialect.name)
    metadata, tables = build_metadata(schemas)
    create_registry(engine, schemas, metadata)
    with engine.begin() as conn:
        create_views(conn, tables, schemas.dlm)
    return Registry(engine, schemas, tables)
