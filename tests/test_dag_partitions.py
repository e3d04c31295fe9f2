"""Scale-out through Airflow (issue #9): a site with `map_partitions: 2` maps patient-key ranges as mapped
`map_partition` tasks, then `audit_partitions`; `dag.test()` of its full refresh against the FHIR test
server gives the registry a sequential site (`load_and_audit`) gives from the same server. That partitions
running at once give the same registry is tested in tests/test_map_batches.py (two transactions open
together); here the DAG's wiring, its tasks and the refusal on SQLite."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import _fresh_pg_database, registry_connection
from tests.fhir_server import FhirTestServer
from tests.registry_compare import assert_same_registry

SITES_DAG_FILE = Path(__file__).resolve().parents[1] / "dags" / "dlm_sites.py"
PARTITIONED_GRAPH = {
    "plan": {"resource_types", "extract", "stage", "map_partition", "audit_partitions", "publish",
             "record_failure"},
    "resource_types": {"extract"},
    "extract": {"stage"},
    "stage": {"map_partition", "publish"},
    "map_partition": {"audit_partitions"},
    "audit_partitions": {"publish"},
    "publish": {"record_failure"},
    "record_failure": set(),
}


@pytest.fixture(scope="module")
def sites(airflow_home, tmp_path_factory):
    """Three sites on one server: partitioned and sequential on PostgreSQL, partitioned on SQLite."""
    if not os.environ.get("DLMREG_TEST_PG_URL"):
        pytest.skip("DLMREG_TEST_PG_URL not set (scripts/test.sh starts a PostgreSQL)")
    root = tmp_path_factory.mktemp("partition_sites")
    path = root / "sites.yaml"
    path.write_text(textwrap.dedent(f"""
        sites:
          - {{id: parted, start_date: "2026-03-01", registry_conn_id: registry_parted, map_partitions: 2,
             out_dir: "{root / 'out_parted'}"}}
          - {{id: sequential, start_date: "2026-03-01", registry_conn_id: registry_sequential,
             out_dir: "{root / 'out_sequential'}"}}
          - {{id: lite, start_date: "2026-03-01", registry_conn_id: registry_lite, map_partitions: 2,
             out_dir: "{root / 'out_lite'}"}}
    """))
    urls = {"parted": _fresh_pg_database(), "sequential": _fresh_pg_database(),
            "lite": f"sqlite:///{root / 'lite.sqlite'}"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLMREG_SITES_FILE", str(path))
        for site, url in urls.items():
            mp.setenv(f"AIRFLOW_CONN_REGISTRY_{site.upper()}", json.dumps(registry_connection(url)))
        yield {"root": root, **urls}


@pytest.fixture(scope="module")
def bag(sites):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(SITES_DAG_FILE))


def test_partitioned_site_maps_in_mapped_tasks(bag):
    assert bag.import_errors == {}
    for kind in ("incremental", "full_refresh"):
        dag = bag.get_dag(f"dlm_registry_{kind}_parted")
        assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == PARTITIONED_GRAPH
        assert dag.get_task("audit_partitions").retries == 0
        assert "load_and_audit" in bag.get_dag(f"dlm_registry_{kind}_sequential").task_ids


def test_partitioned_full_refresh_equals_the_sequential_one(bag, sites, cohort_factory, monkeypatch):
    from airflow.utils.state import DagRunState

    cohort = cohort_factory(20, 33)
    with FhirTestServer(page_size=100) as server:
        server.load_ndjson_dir(cohort)
        for site in ("parted", "sequential", "lite"):
            monkeypatch.setenv(f"AIRFLOW_CONN_FHIR_{site.upper()}", json.dumps({"conn_type": "http",
                                                                                "host": server.url}))
        parted = bag.get_dag("dlm_registry_full_refresh_parted").test()
        sequential = bag.get_dag("dlm_registry_full_refresh_sequential").test()
        lite = bag.get_dag("dlm_registry_full_refresh_lite").test()
    assert parted.state == DagRunState.SUCCESS and sequential.state == DagRunState.SUCCESS
    tasks = {ti.task_id: ti for ti in parted.get_task_instances()}
    assert {ti.map_index for ti in parted.get_task_instances() if ti.task_id == "map_partition"} == {0, 1}
    assert tasks["audit_partitions"].state == "success"
    assert_same_registry(sites["parted"], sites["sequential"])
    engine = sa.create_engine(sites["parted"])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM dlm.dlm_run")).scalars().all() == ["published"]
    engine.dispose()

    # SQLite takes one writer at a time: the partitioned site fails with the reason recorded, nothing published
    assert lite.state == DagRunState.FAILED
    engine = sa.create_engine(sites["lite"])
    with engine.connect() as conn:
        status, message = conn.execute(sa.text("SELECT status, message FROM dlm_run")).one()
        persons = conn.execute(sa.text("SELECT count(*) FROM person")).scalar()
    engine.dispose()
    assert status == "failed" and "needs a PostgreSQL registry" in message and persons == 0
