"""The Airflow DAG (`dags/dlm_registry.py`) and the pilot's `docker-compose.yml`.

Airflow reads its configuration when it is first imported, so the `airflow_home` fixture (conftest)
sets the environment (a private AIRFLOW_HOME with a SQLite metadata database) and migrates it before
any test imports airflow; tests import airflow inside their bodies.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# find_spec, not importorskip: importing airflow here would freeze its configuration before the
# fixture below has pointed it at a private AIRFLOW_HOME.
needs_airflow = pytest.mark.skipif(importlib.util.find_spec("airflow") is None,
                                   reason="apache-airflow is not installed (pip install -e '.[airflow]')")

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
DAG_FILE = DAGS / "dlm_registry.py"
DAG_ID = "dlm_registry"

# task -> its direct downstream tasks
EXPECTED_GRAPH = {
    "resolve_settings": {"stage", "record_run"},
    "stage": {"load_and_audit"},
    "load_and_audit": {"publish"},
    "publish": {"record_run"},
    "record_run": set(),
}
HEAVY_MODULES = ("pandas", "great_expectations", "lifelines", "sqlalchemy", "matplotlib", "scipy", "etl",
                 "registry_schema")


@pytest.fixture(scope="module")
def dag_bag(airflow_home):
    from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@needs_airflow
def test_dag_folder_imports_cleanly(dag_bag):
    assert dag_bag.import_errors == {}
    assert DAG_ID in dag_bag.dag_ids
    dag = dag_bag.get_dag(DAG_ID)
    assert dag.schedule is None
    assert dag.catchup is False
    assert dag.doc_md and "load_and_audit" in dag.doc_md
    assert set(dag.params.keys()) == {"source", "registry_url", "out_dir", "followup_window_months"}


@needs_airflow
def test_task_graph(dag_bag):
    dag = dag_bag.get_dag(DAG_ID)
    graph = {task.task_id: set(task.downstream_task_ids) for task in dag.tasks}
    assert graph == EXPECTED_GRAPH
    upstream = {task.task_id: set(task.upstream_task_ids) for task in dag.tasks}
    assert upstream == {t: {u for u, downs in EXPECTED_GRAPH.items() if t in downs} for t in EXPECTED_GRAPH}


@needs_airflow
def test_task_policies(dag_bag):
    """Network-facing stage retries with backoff; every task has a timeout; quality never retries."""
    dag = dag_bag.get_dag(DAG_ID)
    for task in dag.tasks:
        assert task.execution_timeout is not None, task.task_id
    stage = dag.get_task("stage")
    assert stage.retries >= 1 and stage.retry_exponential_backoff > 1
    assert dag.get_task("load_and_audit").retries == 0


@needs_airflow
def test_dag_file_parses_without_heavy_imports(airflow_home):
    """Parsing the DAG file (as the dag-processor does) loads none of the stage dependencies.

    Airflow itself imports SQLAlchemy, so the check is on what the DAG file adds on top of `airflow.sdk`.
    """
    probe = textwrap.dedent(f"""
        import importlib.util, json, sys
        import airflow.sdk
        before = set(sys.modules)
        spec = importlib.util.spec_from_file_location("dlm_registry_dag", {str(DAG_FILE)!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        added = sorted(set(sys.modules) - before)
        present = [m for m in {HEAVY_MODULES!r} if m in sys.modules and m != "sqlalchemy"]
        print(json.dumps({{"added": added, "present": present}}))
    """)
    done = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ), capture_output=True, text=True,
                          timeout=120, cwd=str(airflow_home))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    heavy_added = [m for m in report["added"] if m.split(".")[0] in HEAVY_MODULES]
    assert heavy_added == []
    assert report["present"] == []


@needs_airflow
def test_dag_run_on_demo_cohort(dag_bag, tmp_path):
    """`dag.test()` runs every task in-process on the demo cohort into a SQLite registry."""
    from airflow.utils.state import DagRunState

    out_dir = tmp_path / "out"
    registry = tmp_path / "registry.sqlite"
    dag = dag_bag.get_dag(DAG_ID)
    dag_run = dag.test(run_conf={"source": "", "registry_url": f"sqlite:///{registry}",
                                 "out_dir": str(out_dir), "followup_window_months": 24})
    assert dag_run.state == DagRunState.SUCCESS

    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    run = results["run"]
    assert run["status"] == "published"
    assert run["resources_read"] > 0
    assert run["resources_read"] == run["loaded"] + run["quarantined"] + run["excluded"]
    assert run["source"] == "demo cohort (synthetic)"
    assert results["quality"]["failed_critical"] == 0
    assert "ct_and_mri_disappeared" in results["npv"]
    assert (out_dir / "report.html").exists()
    assert (out_dir / "demo_source" / "truth.json").exists()
    dashboard = (out_dir / "dashboard.html").read_text(encoding="utf-8")
    assert "Published." in dashboard and "not published" not in dashboard
    flow = results["lesion_flow"]["disappeared_on_ct_and_mri"]
    assert f"{flow['lesions']} lesions, {flow['patients']} patients" in dashboard

    # only small JSON passes between tasks: one return value each, counts and paths, no patient rows
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = {(x.task_id, x.key): len(json.dumps(x.value))
                 for x in session.query(XComModel).filter(XComModel.dag_id == DAG_ID,
                                                          XComModel.run_id == dag_run.run_id)}
    assert {task_id for task_id, _ in xcoms} == set(EXPECTED_GRAPH)
    assert {key for _, key in xcoms} == {"return_value"}
    assert max(xcoms.values()) < 16_000
    with sqlite3.connect(registry) as conn:
        assert conn.execute("SELECT COUNT(*) FROM person").fetchone()[0] > 0
        assert conn.execute("SELECT status, resources_read FROM dlm_run").fetchall() == [
            ("published", run["resources_read"])]


@needs_airflow
def test_failed_critical_check_blocks_publication(dag_bag, tmp_path, monkeypatch):
    """A critical quality failure fails the DAG run and `publish` never runs (no results.json)."""
    from airflow.utils.state import DagRunState, TaskInstanceState

    import etl.tasks

    def failing_audit(*args, **kwargs):
        from etl.pipeline import RunFailed

        raise RunFailed("critical quality checks failed (nothing published): person.year_of_birth not null")

    # dag.test runs tasks in this process, so the task's `from etl.tasks import load_audit_task` sees the
    # patch; staging is replaced by a cheap stand-in to keep the test fast.
    monkeypatch.setattr(etl.tasks, "materialise_demo_source", lambda directory: directory)
    monkeypatch.setattr(etl.tasks, "stage_task", lambda *a, **k: {"resources_read": 0, "loaded": 0,
                                                                  "quarantined": 0, "excluded": 0})
    monkeypatch.setattr(etl.tasks, "load_audit_task", failing_audit)
    out_dir = tmp_path / "out"
    dag = dag_bag.get_dag(DAG_ID)
    dag_run = dag.test(run_conf={"out_dir": str(out_dir), "registry_url": f"sqlite:///{tmp_path / 'r.sqlite'}"})
    assert dag_run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states["load_and_audit"] == TaskInstanceState.FAILED
    assert states["publish"] == TaskInstanceState.UPSTREAM_FAILED
    assert states["record_run"] == TaskInstanceState.SUCCESS
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert results["run"]["status"] == "failed" and results["run"]["message"] == "failed at load_and_audit"
    assert "npv" not in results and not (out_dir / "report.html").exists()
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        assert conn.execute("SELECT status FROM dlm_run").fetchall() == [("failed",)]
    assert "No check results were stored for this run" in (out_dir / "dashboard.html").read_text()


@needs_airflow
def test_failed_audit_reaches_the_teardown(dag_bag, tmp_path, cohort_factory):
    """A real failed audit: `record_run` gets the audit's check summary and lesion flow (pushed by the failing
    task) into results.json and the dashboard."""
    from airflow.utils.state import TaskInstanceState

    from tests.test_quality_dlm_rules import plant_duplicate_lesion

    source = tmp_path / "corrupt"
    shutil.copytree(cohort_factory(20, 4), source)
    plant_duplicate_lesion(source)
    out_dir = tmp_path / "out"
    dag_run = dag_bag.get_dag(DAG_ID).test(run_conf={"source": str(source), "out_dir": str(out_dir),
                                                     "registry_url": f"sqlite:///{tmp_path / 'r.sqlite'}"})
    assert {ti.task_id: ti.state for ti in dag_run.get_task_instances()}["record_run"] == TaskInstanceState.SUCCESS
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert results["run"]["status"] == "failed"
    assert results["quality"]["failed_critical_checks"] == ["DLM4:lesion_identity_unique",
                                                            "DLM7:baseline_before_chemotherapy"]
    assert results["lesion_flow"]["lesions_collected"]["lesions"] > 0
    dashboard = (out_dir / "dashboard.html").read_text(encoding="utf-8").replace("<wbr>", "")
    assert "DLM4:lesion_identity_unique" in dashboard and "audited data, not published" in dashboard


# --- docker-compose.yml -------------------------------------------------------------------------------------

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def _compose_variables() -> set[str]:
    """Variables docker-compose substitutes (`${NAME...}`; `$${NAME}` is left to the container's shell)."""
    text = COMPOSE.read_text(encoding="utf-8").replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def test_env_example_lists_every_compose_variable():
    listed = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M))
    assert _compose_variables() - listed == set()
    assert {"DLMREG_PSEUDONYM_KEY", "DLMREG_REGISTRY_URL", "AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_USER"} <= listed


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (apt-get install docker-compose)")
@pytest.mark.parametrize("env_file", ["none", "example"])
@pytest.mark.parametrize("profile", [None, "celery"])
def test_compose_file_validates(tmp_path, env_file, profile):
    """`docker-compose config -q` accepts the pilot stack with no .env (defaults) and with .env.example."""
    if env_file == "none":
        (tmp_path / "empty.env").write_text("", encoding="utf-8")
        env_path = tmp_path / "empty.env"
    else:
        env_path = ENV_EXAMPLE
    # the caller's own AIRFLOW_*/DLMREG_* variables must not mask missing defaults
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "DLMREG", "COMPOSE_"))} | {"HOME": str(tmp_path)}
    command = [shutil.which("docker-compose"), "--env-file", str(env_path), "--project-directory", str(REPO),
               "-f", str(COMPOSE), *(["--profile", profile] if profile else []), "config", "-q"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
