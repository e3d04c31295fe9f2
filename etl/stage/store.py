"""Set-based writes to the staging table, inside the caller's transaction.

PostgreSQL (psycopg 3): rows whose key is not in staging are copied straight into it (`COPY ... FROM
STDIN`); changed rows are copied into a temporary table, then moved with one `INSERT ... SELECT ... ON
CONFLICT (resource_type, resource_id) DO UPDATE`; deletions copy the keys into a temporary table and run
one `DELETE ... USING`. SQLite: the same insert, upsert and delete statements, sent with executemany
(SQLite runs in-process, so a round trip costs nothing).
Statements are SQLAlchemy Core; only the COPY goes through the driver connection. The temporary tables
are created in the stage's transaction and dropped at its end (`close`).

Precondition: `staging` (fhir_resource) exists; its primary key is (resource_type, resource_id).
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from etl.bulk import copies, copy_rows, insert_rows

KEY = ("resource_type", "resource_id")


class StagingStore:
    """Upserts and deletions of staging rows for one stage transaction (`for_connection` picks the dialect)."""

    def __init__(self, conn: sa.Connection, staging: sa.Table):
        self.conn, self.staging = conn, staging
        self.columns = [c.name for c in staging.columns]

    @staticmethod
    def for_connection(conn: sa.Connection, staging: sa.Table) -> StagingStore:
        if copies(conn):
            return CopyStagingStore(conn, staging)
        return StagingStore(conn, staging)

    def _insert(self):
        return sqlite.insert(self.staging) if self.conn.dialect.name == "sqlite" else postgresql.insert(self.staging)

    def _upsert(self, insert):
        return insert.on_conflict_do_update(
            index_elements=[self.staging.c[k] for k in KEY],
            set_={c: insert.excluded[c] for c in self.columns if c not in KEY})

    def insert(self, rows: list[dict]) -> None:
        """Insert rows (dicts with every staging column) whose keys are not in staging (etl.bulk: COPY on
        PostgreSQL with psycopg)."""
        insert_rows(self.conn, self.staging, rows)

    def upsert(self, rows: list[dict]) -> None:
        """Insert or replace rows (dicts with every staging column), keys unique within the batch."""
        if rows:
            self.conn.execute(self._upsert(self._insert()), rows)

    def delete(self, keys: list[tuple[str, str]]) -> int:
        """Delete rows by (resource_type, resource_id); returns how many were deleted."""
        if not keys:
            return 0
        s = self.staging
        statement = s.delete().where(s.c.resource_type == sa.bindparam("k_type"),
                                     s.c.resource_id == sa.bindparam("k_id"))
        result = self.conn.execute(statement, [{"k_type": t, "k_id": i} for t, i in keys])
        return result.rowcount

    def close(self) -> None:
        """Drop what the store created (nothing for executemany)."""


class CopyStagingStore(StagingStore):
    """PostgreSQL with psycopg 3: COPY into temporary tables, then one set-based statement per batch."""

    def __init__(self, conn: sa.Connection, staging: sa.Table):
        super().__init__(conn, staging)
        metadata = sa.MetaData()
        # Temporary tables live in the session's pg_temp schema, whatever schema staging is in.
        self.rows = sa.Table("dlm_stage_rows", metadata, *[sa.Column(c.name, c.type) for c in staging.columns],
                             prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
        self.keys = sa.Table("dlm_stage_keys", metadata, *[sa.Column(k, staging.c[k].type) for k in KEY],
                             prefixes=["TEMPORARY"], postgresql_on_commit="DROP")
        self.preparer = conn.dialect.identifier_preparer
        for table in (self.rows, self.keys):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS pg_temp.{self.preparer.format_table(table)}"))
            table.create(conn)
        move = postgresql.insert(staging).from_select(self.columns, sa.select(*[self.rows.c[c] for c in self.columns]))
        self.move = self._upsert(move)
        self.remove = staging.delete().where(*[staging.c[k] == self.keys.c[k] for k in KEY])

    def _truncate(self, table: sa.Table) -> None:
        # TRUNCATE, not DELETE: a temporary table is never vacuumed, deleted rows would pile up per batch.
        self.conn.execute(sa.text(f"TRUNCATE {self.preparer.format_table(table)}"))

    def upsert(self, rows: list[dict]) -> None:
        if not rows:
            return
        insert_rows(self.conn, self.rows, rows)
        self.conn.execute(self.move)
        self._truncate(self.rows)

    def delete(self, keys: list[tuple[str, str]]) -> int:
        if not keys:
            return 0
        copy_rows(self.conn, self.keys, KEY, keys)
        deleted = self.conn.execute(self.remove).rowcount
        self._truncate(self.keys)
        return deleted

    def close(self) -> None:
        for table in (self.rows, self.keys):
            table.drop(self.conn)
