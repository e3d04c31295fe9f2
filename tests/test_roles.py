"""PostgreSQL roles (registry_schema/roles.py, `dlmreg setup-roles`): each role logs in and reads only
what it may. Runs on the test cluster, whose loopback authentication is `trust`, so users need no
password here."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from etl.cli import main
from etl.pipeline import RunSettings, run

READS = {
    "analysis view": "SELECT count(*) FROM dlm.dlm_lesion_v",
    "survival view": "SELECT count(*) FROM dlm.dlm_patient_survival_v",
    "CDM person": "SELECT count(*) FROM cdm.person",
    "lesion outcomes": "SELECT count(*) FROM dlm.dlm_lesion_outcome",
    "run summary": "SELECT count(*) FROM dlm.dlm_run",
    "quality results": "SELECT count(*) FROM dlm.dlm_quality_result",
    "raw FHIR (staging)": "SELECT count(*) FROM staging.fhir_resource",
    "report text (note)": "SELECT count(*) FROM cdm.note",
    "report snippets (note_nlp)": "SELECT count(*) FROM cdm.note_nlp",
    "quarantined input": "SELECT count(*) FROM dlm.dlm_quarantine",
    "id lineage": "SELECT count(*) FROM dlm.dlm_lineage",
}
ALLOWED = {
    "analyst": {"analysis view", "survival view", "CDM person", "lesion outcomes", "run summary", "quality results"},
    "dashboard": {"run summary", "quality results"},
    "etl": set(READS),
}
ROLE_OF = {"analyst": "dlm_analyst", "dashboard": "dlm_dashboard_reader", "etl": "dlm_etl_writer"}


def _readable(url: str) -> set[str]:
    engine = sa.create_engine(url)
    readable = set()
    try:
        for name, sql in READS.items():
            with engine.connect() as conn:
                try:
                    conn.execute(sa.text(sql)).scalar()
                    readable.add(name)
                except sa.exc.ProgrammingError as exc:
                    assert "permission denied" in str(exc.orig)
    finally:
        engine.dispose()
    return readable


@pytest.fixture(scope="module")
def registry_with_users(cohort_factory, tmp_path_factory):
    import os

    if not os.environ.get("DLMREG_TEST_PG_URL"):
        pytest.skip("DLMREG_TEST_PG_URL not set (scripts/test.sh starts a PostgreSQL)")
    from tests.conftest import _fresh_pg_database

    url = _fresh_pg_database()
    out = tmp_path_factory.mktemp("roles")
    run(RunSettings(source=str(cohort_factory(20, 3)), registry_url=url, out_dir=out / "first", show_progress=False))
    suffix = uuid.uuid4().hex[:8]
    users = {kind: f"{kind}_{suffix}" for kind in ROLE_OF}
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        for user in users.values():
            conn.execute(sa.text(f'CREATE ROLE "{user}" LOGIN'))
    admin.dispose()
    grants = [arg for kind, user in users.items() for arg in ("--grant", f"{user}={ROLE_OF[kind]}")]
    assert main(["setup-roles", "--registry", url, *grants]) == 0
    return url, users, out


def _as(url: str, user: str) -> str:
    return sa.engine.make_url(url).set(username=user, password=None).render_as_string(hide_password=False)


@pytest.mark.parametrize("kind", sorted(ROLE_OF))
def test_each_role_reads_exactly_what_it_may(registry_with_users, kind):
    url, users, _ = registry_with_users
    assert _readable(_as(url, users[kind])) == ALLOWED[kind]


def test_analyst_cannot_write_and_etl_writer_can(registry_with_users):
    url, users, _ = registry_with_users
    insert = "INSERT INTO dlm.dlm_run (run_id, started_at, status) VALUES (:r, now(), 'running')"
    analyst = sa.create_engine(_as(url, users["analyst"]))
    with analyst.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        conn.execute(sa.text(insert), {"r": "x"})
    analyst.dispose()
    writer = sa.create_engine(_as(url, users["etl"]))
    with writer.connect() as conn:
        conn.execute(sa.text(insert), {"r": "y"})
        conn.rollback()
    writer.dispose()


def test_views_keep_the_analyst_grant_after_the_next_run(registry_with_users, cohort_factory):
    """Every run drops and recreates the views; the analyst must still read them afterwards."""
    url, users, out = registry_with_users
    run(RunSettings(source=str(cohort_factory(20, 3)), registry_url=url, out_dir=out / "second", show_progress=False))
    assert {"analysis view", "survival view"} <= _readable(_as(url, users["analyst"]))


def test_setup_roles_refuses_bad_input(registry_with_users, tmp_path, capsys):
    url, _, _ = registry_with_users
    assert main(["setup-roles", "--registry", url, "--grant", "someone=superuser"]) == 2
    assert "unknown role" in capsys.readouterr().err
    assert main(["setup-roles", "--registry", url, "--grant", 'x"; DROP TABLE cdm.person; --=dlm_analyst']) == 2
    assert "not a plain PostgreSQL user name" in capsys.readouterr().err
    assert main(["setup-roles", "--registry", f"sqlite:///{tmp_path / 'r.sqlite'}"]) == 2
    assert "PostgreSQL" in capsys.readouterr().err
