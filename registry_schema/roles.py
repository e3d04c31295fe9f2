"""PostgreSQL roles of the registry: who may read what.

Why: the registry holds cancer patients' health data. The ETL writes everything; an analyst reads the
analysis views, the pseudonymised CDM and lesion tables and the run/quality summaries, but never
staging (raw FHIR), the quarantine (raw input lines), report text (NOTE, NOTE_NLP) or the lineage from
registry ids back to FHIR ids; a dashboard reader sees only run and quality summaries. The roles are
group roles (NOLOGIN); people and services log in as their own users, granted one role each.

Views are recreated on every run, which drops their grants; :func:`grant_view_readers` puts them back.
"""
from __future__ import annotations

import re

import sqlalchemy as sa

ETL_WRITER = "dlm_etl_writer"
ANALYST = "dlm_analyst"
DASHBOARD_READER = "dlm_dashboard_reader"
ROLES = (ETL_WRITER, ANALYST, DASHBOARD_READER)
VIEWS = ("dlm_lesion_v", "dlm_patient_survival_v")
# Tables no reader role may see: raw or re-identifying content.
ANALYST_DENIED = frozenset({
    "note", "note_nlp",                             # report text and its snippets
    "dlm_quarantine",                               # raw input lines (de-identified, but free text)
    "dlm_lineage",                                  # registry id <-> FHIR resource id
    "dlm_patient_digest", "dlm_extract_state",      # ETL bookkeeping
    "dlm_check_scope",
})
DASHBOARD_TABLES = ("dlm_run", "dlm_quality_result", "dlm_unmapped_code")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _table(conn: sa.Connection, table: sa.Table) -> str:
    return conn.dialect.identifier_preparer.format_table(table)


def _role_exists(conn: sa.Connection, role: str) -> bool:
    return conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is not None


def analyst_tables(tables: dict[str, sa.Table], staging_schema: str | None) -> list[sa.Table]:
    """The CDM and DLM tables an analyst may read (everything outside staging and ANALYST_DENIED)."""
    return [t for name, t in sorted(tables.items()) if name not in ANALYST_DENIED and t.schema != staging_schema]


def setup_roles(engine: sa.Engine, tables: dict[str, sa.Table], schemas, members: dict[str, str] = ()) -> list[str]:
    """Create the three roles (if missing), set their privileges, and grant each login user its role.

    Preconditions: PostgreSQL; the registry exists (run ``dlmreg run`` once, or open it); the caller
    may create roles. Idempotent: privileges are revoked and granted again on every call.

    Parameters
    ----------
    engine : sqlalchemy.Engine
    tables : dict of str -> sqlalchemy.Table
        The registry's tables (``Registry.tables``).
    schemas : registry_schema.SchemaNames
    members : dict of str -> str
        Login user -> one of ``ROLES``; the users must exist.

    Returns
    -------
    list of str
        One line per action, for the operator (no secrets).
    """
    if engine.dialect.name != "postgresql":
        raise ValueError("roles need PostgreSQL (SQLite has no users)")
    for user, role in dict(members).items():
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        if not _USER_NAME.match(user):
            raise ValueError(f"not a plain PostgreSQL user name: {user!r}")
    quote = engine.dialect.identifier_preparer.quote
    schema_names = sorted({s for s in (schemas.cdm, schemas.dlm, schemas.staging) if s})
    reader_schemas = sorted({s for s in (schemas.cdm, schemas.dlm) if s})
    done = []
    with engine.begin() as conn:
        for role in ROLES:
            if not _role_exists(conn, role):
                conn.execute(sa.text(f"CREATE ROLE {quote(role)} NOLOGIN"))
                done.append(f"created role {role}")
        for schema in schema_names:
            for role in ROLES:
                conn.execute(sa.text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {quote(schema)} FROM {quote(role)}"))
                conn.execute(sa.text(f"REVOKE ALL ON SCHEMA {quote(schema)} FROM {quote(role)}"))
            conn.execute(sa.text(f"GRANT USAGE, CREATE ON SCHEMA {quote(schema)} TO {quote(ETL_WRITER)}"))
            conn.execute(sa.text(f"GRANT ALL ON ALL TABLES IN SCHEMA {quote(schema)} TO {quote(ETL_WRITER)}"))
            conn.execute(sa.text(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA {quote(schema)} TO {quote(ETL_WRITER)}"))
        for schema in reader_schemas:
            for role in (ANALYST, DASHBOARD_READER):
                conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {quote(schema)} TO {quote(role)}"))
        readable = analyst_tables(tables, schemas.staging)
        for table in readable:
            conn.execute(sa.text(f"GRANT SELECT ON {_table(conn, table)} TO {quote(ANALYST)}"))
        for name in DASHBOARD_TABLES:
            conn.execute(sa.text(f"GRANT SELECT ON {_table(conn, tables[name])} TO {quote(DASHBOARD_READER)}"))
        grant_view_readers(conn, schemas.dlm)
        done.append(f"privileges set: {ETL_WRITER} all; {ANALYST} views and {len(readable)} "
                    f"tables; {DASHBOARD_READER} {len(DASHBOARD_TABLES)} tables")
        for user, role in dict(members).items():
            conn.execute(sa.text(f"GRANT {quote(role)} TO {quote(user)}"))
            done.append(f"granted {role} to {user}")
    return done


def grant_view_readers(conn: sa.Connection, schema: str | None) -> None:
    """Give the analyst role SELECT on the analysis views again (no-op where the role does not exist)."""
    if conn.dialect.name != "postgresql" or not _role_exists(conn, ANALYST):
        return
    quote = conn.dialect.identifier_preparer.quote
    for view in VIEWS:
        qualified = f"{quote(schema)}.{quote(view)}" if schema else quote(view)
        conn.execute(sa.text(f"GRANT SELECT ON {qualified} TO {quote(ANALYST)}"))
