"""The per-site DAGs (`dags/dlm_sites.py`, issue #6): parsing, task graphs, and scheduled runs with
`dag.test()` pulling data intervals from the FHIR test server into PostgreSQL.

A manual `dag.test(logical_date=D)` of a daily interval timetable runs the latest complete interval
before D: [D - 1 day, D).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import registry_connection
from tests.fhir_server import FhirTestServer

REPO = Path(__file__).resolve().parents[1]
SITES_DAG_FILE = REPO / "dags" / "dlm_sites.py"
DAY = [datetime(2026, 3, d, tzinfo=timezone.utc) for d in (1, 2, 3, 4)]

ETL_GRAPH = {
    "plan": {"resource_types", "extract", "stage", "load_and_audit", "publish", "record_failure"},
    "resource_types": {"extract"},
    "extract": {"stage"},
    "stage": {"load_and_audit", "publish"},
    "load_and_audit": {"publish"},
    "publish": {"record_failure"},
    "record_failure": set(),
}


@pytest.fixture(scope="module")
def sites(airflow_home, tmp_path_factory, pg_url_module):
    """Two sites on one FHIR server, each with its own registry (A on PostgreSQL, B on SQLite)."""
    root = tmp_path_factory.mktemp("sites")
    path = root / "sites.yaml"
    path.write_text(textwrap.dedent(f"""
        sites:
          - {{id: site_a, start_date: "2026-03-01", registry_conn_id: registry_a, overlap_seconds: 0,
             out_dir: "{root / 'out_a'}"}}
          - {{id: site_b, start_date: "2026-03-01", registry_conn_id: registry_b, overlap_seconds: 0,
             out_dir: "{root / 'out_b'}", pool: fhir_shared_b, resource_types: [Patient, Condition]}}
    """))
    urls = {"registry_a": pg_url_module, "registry_b": f"sqlite:///{root / 'registry_b.sqlite'}"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLMREG_SITES_FILE", str(path))
        for name, url in urls.items():
            mp.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(registry_connection(url)))
        yield {"root": root, **urls}


@pytest.fixture(scope="module")
def bag(sites):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(SITES_DAG_FILE))


def test_two_sites_give_two_independent_sets_of_dags(bag):
    assert bag.import_errors == {}
    expected = {f"dlm_registry_{kind}_{site}" for kind in ("incremental", "full_refresh", "analysis")
                for site in ("site_a", "site_b")}
    assert set(bag.dag_ids) == expected
    for site in ("site_a", "site_b"):
        incremental = bag.get_dag(f"dlm_registry_incremental_{site}")
        full = bag.get_dag(f"dlm_registry_full_refresh_{site}")
        for dag in (incremental, full):
            assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == ETL_GRAPH
            assert dag.doc_md and "data interval" in dag.doc_md
            assert all(t.execution_timeout is not None for t in dag.tasks)
            extract = dag.get_task("extract")
            assert extract.retries >= 1 and extract.retry_exponential_backoff > 1
            assert dag.get_task("load_and_audit").retries == 0
        assert full.schedule is None and incremental.timetable.expression == "0 0 * * *"  # @daily
        analysis = bag.get_dag(f"dlm_registry_analysis_{site}")
        assert [a.uri for a in analysis.timetable.asset_condition.objects] == [f"dlmreg://{site}/registry"]
    assert bag.get_dag("dlm_registry_incremental_site_a").get_task("extract").pool == "fhir_site_a"
    assert bag.get_dag("dlm_registry_incremental_site_b").get_task("extract").pool == "fhir_shared_b"


def test_sites_dag_file_parses_without_heavy_imports(sites):
    probe = textwrap.dedent(f"""
        import importlib.util, json, sys
        import airflow.sdk
        before = set(sys.modules)
        spec = importlib.util.spec_from_file_location("dlm_sites_dag", {str(SITES_DAG_FILE)!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print(json.dumps(sorted(set(sys.modules) - before)))
    """)
    done = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ), capture_output=True, text=True,
                          timeout=120, cwd=str(REPO))
    assert done.returncode == 0, done.stderr[-2000:]
    added = json.loads(done.stdout.strip().splitlines()[-1])
    heavy = ("pandas", "great_expectations", "lifelines", "matplotlib", "scipy", "registry_schema", "httpx")
    assert [m for m in added if m.split(".")[0] in heavy] == []
    assert [m for m in added if m.startswith("etl")] == ["etl", "etl.sites"]


def _state(url: str) -> dict:
    engine = sa.create_engine(url)
    schema = "dlm" if engine.dialect.name == "postgresql" else None
    with engine.connect() as conn:
        state = dict(conn.execute(sa.text(f"SELECT name, value FROM {schema + '.' if schema else ''}dlm_extract_state")).all())
        runs = conn.execute(sa.text(f"SELECT status, resources_read FROM {schema + '.' if schema else ''}dlm_run "
                                    "ORDER BY started_at")).all()
    engine.dispose()
    return {"watermarks": state, "runs": [tuple(r) for r in runs]}


def _clock(start: datetime):
    ticks = iter(range(10**6))
    return lambda: start + timedelta(seconds=next(ticks))


def test_incremental_runs_read_their_intervals_then_analysis_writes_results(bag, sites, cohort_factory, monkeypatch):
    from airflow.utils.state import DagRunState

    cohort = cohort_factory(15, 21)
    with FhirTestServer(page_size=100) as server:
        monkeypatch.setenv("AIRFLOW_CONN_FHIR_SITE_A", json.dumps({"conn_type": "http", "host": server.url}))
        monkeypatch.setenv("AIRFLOW_CONN_FHIR_SITE_B", json.dumps({"conn_type": "http", "host": server.url}))
        server.clock = _clock(DAY[0] + timedelta(hours=8))
        loaded = server.load_ndjson_dir(cohort)
        server.clock = _clock(DAY[1] + timedelta(hours=8))
        patients = [json.loads(line) for line in (cohort / "Patient.ndjson").read_text().splitlines()[:3]]
        for patient in patients:  # day 2's changes: three patients get a new version
            server.upsert({**patient, "gender": "unknown"})

        incremental = bag.get_dag("dlm_registry_incremental_site_a")
        first = incremental.test(logical_date=DAY[1])
        assert first.state == DagRunState.SUCCESS
        after_first = _state(sites["registry_a"])
        server.clear_request_log()
        second = incremental.test(logical_date=DAY[2])
        assert second.state == DagRunState.SUCCESS
        searches = [r["query"]["_lastUpdated"] for r in server.request_log if r["method"] == "GET"]
        assert searches and all(sorted(q) == ["ge2026-03-02T00:00:00Z", "lt2026-03-03T00:00:00Z"] for q in searches)
        after_second = _state(sites["registry_a"])

        site_b = bag.get_dag("dlm_registry_incremental_site_b").test(logical_date=DAY[1])
        assert site_b.state == DagRunState.SUCCESS
        b = _state(sites["registry_b"])  # before the full refresh: its own watermark and two types

        server.clear_request_log()
        refresh = bag.get_dag("dlm_registry_full_refresh_site_b").test()
        assert refresh.state == DagRunState.SUCCESS
        full_searches = [r["query"] for r in server.request_log if r["method"] == "GET"]
        assert full_searches and not any("_lastUpdated" in q for q in full_searches)
        refreshed = _state(sites["registry_b"])

    # The three patients changed on day 2 now carry day 2's lastUpdated: they belong to the second interval.
    assert after_first["runs"] == [("published", loaded - len(patients))]
    assert set(after_first["watermarks"].values()) == {"2026-03-02T00:00:00Z"}
    assert after_second["runs"][-1] == ("published", len(patients))  # only the second interval's changes
    assert set(after_second["watermarks"].values()) == {"2026-03-03T00:00:00Z"}
    assert b["watermarks"] == {"Condition": "2026-03-02T00:00:00Z", "Patient": "2026-03-02T00:00:00Z"}
    # The full refresh read both days' data (its watermark: the server's time when each search began).
    assert refreshed["runs"][-1][0] == "published" and refreshed["runs"][-1][1] > b["runs"][-1][1]
    assert all(v > "2026-03-02T00:00:00Z" for v in refreshed["watermarks"].values())
    assert _state(sites["registry_a"])["watermarks"] == after_second["watermarks"]

    analysis = bag.get_dag("dlm_registry_analysis_site_a").test()
    assert analysis.state == DagRunState.SUCCESS
    results = json.loads((sites["root"] / "out_a" / "results.json").read_text())
    assert results["run"]["status"] == "published" and results["npv"]["ct_and_mri_disappeared"]["true_negative"] >= 0
    assert (sites["root"] / "out_a" / "dashboard.html").exists() and (sites["root"] / "out_a" / "report.html").exists()


def test_a_failed_run_records_the_one_line_reason(bag, sites, monkeypatch):
    from airflow.utils.state import DagRunState

    monkeypatch.setenv("AIRFLOW_CONN_FHIR_SITE_B", json.dumps({"conn_type": "http", "host": "fhir.example.org"}))
    run = bag.get_dag("dlm_registry_incremental_site_b").test(logical_date=DAY[3])
    assert run.state == DagRunState.FAILED
    engine = sa.create_engine(sites["registry_b"])
    with engine.connect() as conn:
        status, message = conn.execute(sa.text("SELECT status, message FROM dlm_run ORDER BY started_at DESC")).first()
    engine.dispose()
    assert status == "failed"
    assert message.startswith("extract: connection fhir_site_b: put the FHIR base URL")
