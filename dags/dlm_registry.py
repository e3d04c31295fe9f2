"""
### DLM registry: FHIR R4 -> OMOP CDM v5.4 -> checks -> NPV and survival

One manually triggered run of the disappearing-liver-metastases registry, the same stages `dlmreg run`
runs in-process (`etl.tasks`), one Airflow task each:

1. `resolve_settings`: the run's params -> a small settings dict and a new registry run id.
2. `stage`: reads the FHIR source, pseudonymises and stages the cohort's resources, counts what it read
   (`resources_read = loaded + quarantined + excluded`). Retried with exponential backoff.
3. `load_and_audit` (write-audit-publish): maps staging to OMOP + DLM rows, replaces the registry's rows,
   derives lesion outcomes and runs the quality suites, in one transaction. **A failed critical check
   rolls the load back and fails the task (no retry) and the DAG run**, so nothing is published.
4. `publish`: NPV, survival and the DREAM comparison from the registry; writes `results.json`,
   `report.html` and the Kaplan-Meier plots to `out_dir`.
5. `record_run` (teardown, runs whatever happened): records the outcome in `dlm_run` and writes the
   quality dashboard `dashboard.html`; a failed run still writes `results.json` with its accounting (and
   the audit's check summary and lesion flow when the checks ran). The DAG run's state still follows
   `publish`.

**Params** (trigger with config):

* `source`: FHIR NDJSON / Bulk Data / Bundle directory or file as seen by the workers; empty = the bundled
  synthetic demo cohort, written once to `<out_dir>/demo_source`.
* `registry_url`: SQLAlchemy URL of the registry; empty = `DLMREG_REGISTRY_URL` from the workers'
  environment, else `sqlite:///<out_dir>/dlm_registry.sqlite`. Do not put passwords here (params are
  stored and shown in the UI): PostgreSQL passwords come from the environment (`PGPASSWORD`) or a
  `.pgpass` file.
* `out_dir`: where results go (default `DLMREG_OUT_DIR`, else `/tmp/dlmreg-out`); must be shared by all
  workers.
* `followup_window_months`: follow-up without recurrence that makes a DLM a true negative (DREAM: 24).

Only counts, paths and URLs pass between tasks (XCom), never patient rows. The pseudonym key is read
from `DLMREG_PSEUDONYM_KEY` by the stage task; site mapping directories from `DLMREG_MAPPINGS`.
Runs replace the registry's staging area, so at most one run is active at a time.
"""
from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag, task

DEFAULT_OUT_DIR = os.environ.get("DLMREG_OUT_DIR", "/tmp/dlmreg-out")


@task(multiple_outputs=False, execution_timeout=timedelta(minutes=5))
def resolve_settings() -> dict:
    """Params -> settings for the run (paths and URLs only; no file or database access)."""
    from airflow.sdk import get_current_context

    from etl.tasks import resolve_settings as resolve

    context = get_current_context()
    # A manual run may have no logical date; its run_after is then the run's date.
    when = context.get("logical_date") or context["dag_run"].run_after
    return resolve(dict(context["params"]), context["run_id"], when.date().isoformat())


@task(multiple_outputs=False, retries=3, retry_delay=timedelta(minutes=1), retry_exponential_backoff=2.0,
      max_retry_delay=timedelta(minutes=30), execution_timeout=timedelta(hours=2))
def stage(settings: dict) -> dict:
    """Extract and stage the source; returns the settings plus the read/loaded/quarantined/excluded counts."""
    from etl.tasks import materialise_demo_source, stage_task

    if settings["demo"]:
        materialise_demo_source(settings["source"])
    counts = stage_task(settings["run_id"], settings["source"], settings["registry_url"])
    return {**settings, "staged": counts}


@task(multiple_outputs=False, retries=0, execution_timeout=timedelta(hours=2))
def load_and_audit(state: dict) -> dict:
    """Map, load, derive and run the quality suites in one transaction; a failed critical check rolls the
    load back and fails the task (no retry) and so the DAG run: nothing is published."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    from etl.pipeline import RunFailed
    from etl.tasks import load_audit_task

    try:
        audited = load_audit_task(state["run_id"], state["source_label"], state["registry_url"], state["today"],
                                  state["followup_window_months"], out_dir=state["out_dir"])
    except RunFailed as exc:
        if exc.audit:  # quality and lesion flow (counts) for the teardown's results.json and dashboard
            get_current_context()["ti"].xcom_push(key="audit", value=exc.audit)
        raise AirflowFailException(str(exc)) from exc
    audit = {k: audited[k] for k in ("quality", "lesion_flow")}
    return {**state, "mapped": {k: v for k, v in audited.items() if k not in audit}, **audit}


@task(execution_timeout=timedelta(hours=1))
def publish(state: dict) -> str:
    """Analyse the checked registry and write results.json, report.html and plots; returns the results path."""
    from etl.tasks import publish_task

    run_info = {"source": state["source_label"], "airflow_run_id": state["orchestrator_run_id"],
                "followup_window_months": state["followup_window_months"], **state["staged"],
                **state["mapped"]}
    return publish_task(state["run_id"], state["registry_url"], state["out_dir"], run_info, state["quality"])


@task(execution_timeout=timedelta(minutes=10))
def record_run(settings: dict) -> str:
    """Teardown: record the outcome in dlm_run and write dashboard.html whatever happened; a failed run still
    gets results.json."""
    from airflow.sdk import get_current_context

    from etl.tasks import record_run_task

    ti = get_current_context()["ti"]
    steps = ("stage", "load_and_audit", "publish")
    outputs = {step: ti.xcom_pull(task_ids=step) for step in steps}
    failed = next((step for step in steps if outputs[step] is None), None)
    last = next((outputs[step] for step in reversed(steps[:-1]) if isinstance(outputs[step], dict)), {})
    audit = last if "quality" in last else (ti.xcom_pull(task_ids="load_and_audit", key="audit") or {})
    run_info = {**last.get("staged", {}), **{k: audit[k] for k in ("quality", "lesion_flow") if k in audit}}
    return record_run_task(settings, run_info, published=failed is None, failed_step=failed)


@dag(
    dag_id="dlm_registry",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["dlm", "fhir", "omop", "registry"],
    default_args={"owner": "dlm-registry", "retries": 0},
    params={
        "source": Param("", type="string", title="FHIR source",
                        description="directory or file readable by the workers; empty = the demo cohort"),
        "registry_url": Param("", type="string", title="Registry URL",
                              description="SQLAlchemy URL without password; empty = DLMREG_REGISTRY_URL "
                                          "or SQLite in out_dir"),
        "out_dir": Param(DEFAULT_OUT_DIR, type="string", minLength=1, title="Output directory"),
        "followup_window_months": Param(24, type="number", exclusiveMinimum=0, title="Follow-up window (months)"),
    },
)
def dlm_registry():
    settings = resolve_settings()
    published = publish(load_and_audit(stage(settings)))
    published >> record_run(settings).as_teardown()


dlm_registry()
