"""The database drops every connection in the middle of a load (PostgreSQL restart, failover, an
administrator's pg_terminate_backend): the run fails cleanly (one-line reason, no traceback, nothing
half-published, the run recorded as failed) and the next run completes with the same registry as an
uninterrupted load."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from tests.registry_compare import assert_same_registry


def _command(source, url, out) -> list[str]:
    return [sys.executable, "-m", "etl.cli", "run", "--source", str(source), "--registry", url, "--out", str(out),
            "--no-progress"]


def _staged(engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("fhir_resource", schema="staging"):
            return 0
        return conn.execute(sa.text("SELECT count(*) FROM staging.fhir_resource")).scalar()


def _terminate_all(engine, database: str) -> int:
    with engine.connect() as conn:
        killed = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": database}).scalar()
        conn.commit()
    return killed


@pytest.mark.parametrize("registry_factory", ["postgresql"], indirect=True)
def test_connections_dropped_mid_load_fail_cleanly_and_the_next_run_completes(cohort_factory, tmp_path,
                                                                              registry_factory):
    source = cohort_factory(30, 21)
    reference = registry_factory()
    done = subprocess.run(_command(source, reference, tmp_path / "ref"), capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    url = registry_factory()
    database = sa.engine.make_url(url).database
    watcher = sa.create_engine(url, poolclass=sa.pool.NullPool)
    process = subprocess.Popen(_command(source, url, tmp_path / "dropped"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _staged(watcher) == 0:   # staging commits as a whole: from here on the run maps, loads and audits
        assert process.poll() is None, "the run ended before staging committed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _terminate_all(watcher, database) >= 1
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    reason = [line for line in stderr.splitlines() if line.startswith("dlmreg: ")]
    assert len(reason) == 1 and "registry database" in reason[0]
    with watcher.connect() as conn:
        statuses = [r[0] for r in conn.execute(sa.text("SELECT status FROM dlm.dlm_run"))]
        published_rows = conn.execute(sa.text("SELECT count(*) FROM dlm.dlm_lesion_outcome")).scalar()
    assert statuses == ["failed"]
    assert published_rows == 0   # the interrupted load-audit transaction left nothing behind

    rerun = subprocess.run(_command(source, url, tmp_path / "rerun"), capture_output=True, text=True,
                           timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    watcher.dispose()
    assert_same_registry(url, reference)
