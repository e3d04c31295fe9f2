"""Shared fixtures: registries on SQLite and on a real PostgreSQL (scripts/test.sh starts one and sets
DLMREG_TEST_PG_URL), and synthetic cohorts."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


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
