"""Shared fixtures: registries on SQLite and on a real PostgreSQL (scripts/test.sh starts one and sets
DLMREG_TEST_PG_URL), and synthetic cohorts."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
# Printing report.pdf takes Chromium seconds per run; only the report tests that check the PDF turn it on.
os.environ.setdefault("DLMREG_REPORT_PDF", "off")
# Data Docs take seconds per run too: the tests that look at them (dashboard, PHI scan) turn them on.
os.environ.setdefault("DLMREG_DATA_DOCS", "off")
# Report texts are read in the test's own process (starting worker processes costs more than the small test
# cohorts' reading); tests/test_report_reader.py turns the workers on where it tests them.
os.environ.setdefault("DLMREG_WORKERS", "0")


def _fresh_pg_database() -> str:
    url = sa.engine.make_url(os.environ["DLMREG_TEST_PG_URL"])
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def pg_url():
    if not os.environ.get("DLMREG_TEST_PG_URL"):
        pytest.skip("DLMREG_TEST_PG_URL not set (scripts/test.sh starts a PostgreSQL)")
    return _fresh_pg_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    """A fresh, empty registry database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def cohort_factory(tmp_path_factory):
    """Write (and cache) a synthetic cohort: cohort_factory(patients, seed, **params) -> Path."""
    from etl.synth import SynthParams, write_cohort

    cache: dict = {}

    def make(patients: int, seed: int, **params) -> Path:
        key = (patients, seed, tuple(sorted(params.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"cohort_{patients}_{seed}")
            write_cohort(directory, patients=patients, seed=seed, params=SynthParams(**params))
            cache[key] = directory
        return cache[key]

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_factory(request, tmp_path):
    """new_url() -> a fresh, empty registry database of the parametrised kind (several per test)."""
    if request.param == "postgresql" and not os.environ.get("DLMREG_TEST_PG_URL"):
        pytest.skip("DLMREG_TEST_PG_URL not set (scripts/test.sh starts a PostgreSQL)")
    counter = iter(range(1000))

    def new_url() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / f'registry_{next(counter)}.sqlite'}"
        return _fresh_pg_database()

    return new_url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_registry_url(request, tmp_path_factory):
    """A fresh, empty registry database of each kind, shared by one test module."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'registry.sqlite'}"
    if not os.environ.get("DLMREG_TEST_PG_URL"):
        pytest.skip("DLMREG_TEST_PG_URL not set (scripts/test.sh starts a PostgreSQL)")
    return _fresh_pg_database()


def _airflow_env(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """A private, migrated Airflow home shared by the DAG tests (Airflow reads its configuration once per
    process); the environment is restored at the end of the session."""
    if "airflow" in sys.modules:
        pytest.fail("airflow was imported before the airflow_home fixture configured AIRFLOW_HOME; "
                    "import airflow inside tests only")
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _airflow_env(home).items():
            mp.setenv(name, value)
        # a site's registry or pseudonym key must not leak into the tests
        mp.delenv("DLMREG_REGISTRY_URL", raising=False)
        mp.delenv("DLMREG_PSEUDONYM_KEY", raising=False)
        mp.delenv("DLMREG_MAPPINGS", raising=False)
        done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=dict(os.environ),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield home


def registry_connection(url: str) -> dict:
    """An Airflow connection (the JSON of an AIRFLOW_CONN_* variable) for a registry URL of the tests."""
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite":
        return {"conn_type": "sqlite", "host": u.database}
    return {"conn_type": "postgres", "host": u.host, "port": u.port, "schema": u.database, "login": u.username}


@pytest.fixture(scope="module")
def pg_url_module():
    """A fresh PostgreSQL database shared by one test module."""
    if not os.environ.get("DLMREG_TEST_PG_URL"):
        pytest.skip("DLMREG_TEST_PG_URL not set (scripts/test.sh starts a PostgreSQL)")
    return _fresh_pg_database()
