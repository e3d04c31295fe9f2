"""
### DLM registry: scheduled ETL per site

Three DAGs for every site in the sites file (`DLMREG_SITES_FILE`, default `config/sites.yaml`; see
`etl/sites.py`), each task one call into `etl.scheduled`:

* `dlm_registry_incremental_<site>`: on the site's schedule (daily by default). Each run reads its
  **data interval**: `_lastUpdated >= start - overlap` and `< end`, never "now". So a re-run or a
  backfill (`airflow backfill create`) of an old interval reads that interval. The steps:
  1. `plan`;
  2. `extract`, one mapped task per resource type, in the site's pool, retried with exponential
     backoff;
  3. `stage`, one transaction that also saves the site's watermarks;
  4. `load_and_audit` (write-audit-publish: a failed critical check fails the run and publishes
     nothing); or, for a site with `map_partitions: N` > 1 (scale-out, PostgreSQL only), `map_partition`,
     N mapped tasks each mapping one range of patient keys and committing it (run at once by as many
     workers as are free, e.g. the CeleryExecutor profile), then `audit_partitions`, the checks on the
     committed registry (a failed critical check fails the run and publishes nothing, but the partitions'
     rows stay);
  5. `publish`, which records the run and updates the registry's Asset.

  The `record_failure` teardown records a failed run in `dlm_run` with the failing task's one-line reason.
* `dlm_registry_full_refresh_<site>`: manual; the same steps over everything the server holds, staged
  as a snapshot (what the server no longer returns is removed).
* `dlm_registry_analysis_<site>`: runs when the site's registry Asset is updated. It writes
  `results.json`, `report.html`, the plots and `dashboard.html` to the site's `out_dir`.

Connections, not code, hold endpoints and secrets: `fhir_<site>` (base URL, auth and SMART settings in
extras) and the site's registry connection (default `dlm_registry`). Only settings, paths and counts
pass through XCom.
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

from airflow.sdk import Asset, Connection, CronDataIntervalTimetable, dag, get_current_context, task

from etl.sites import Site, load_sites

NETWORK_RETRIES = {"retries": 3, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": 2.0,
                   "max_retry_delay": timedelta(minutes=30)}


def _fields(conn_id: str) -> dict:
    conn = Connection.get(conn_id)
    return {"conn_id": conn_id, "host": conn.host, "login": conn.login, "password": conn.password,
            "extra": conn.extra_dejson}


@contextmanager
def _reason_kept(*no_retry: type[Exception]):
    """Keep a failing task's one-line reason (XCom `failure`) for the teardown to record in dlm_run; an
    error of a `no_retry` type fails the task at once (retrying will not help: the data or the
    configuration, not the machine, is wrong)."""
    try:
        yield
    except Exception as exc:
        reason = f"{get_current_context()['ti'].task_id}: {exc}".splitlines()[0][:500]
        get_current_context()["ti"].xcom_push(key="failure", value=reason)
        if isinstance(exc, no_retry):
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc
        raise


def _registry(site: Site) -> str:
    from etl.connections import registry_url

    conn = Connection.get(site.registry_conn_id)
    return registry_url(site.registry_conn_id, conn.conn_type, conn.host, conn.login, conn.password, conn.port,
                        conn.schema, conn.extra_dejson)


def _site_dict(site: Site) -> dict:
    return {**site.__dict__, "start_date": site.start_date.isoformat(), "resource_types": list(site.resource_types)}


def registry_asset(site: Site) -> Asset:
    return Asset(name=f"dlm_registry_{site.id}", uri=f"dlmreg://{site.id}/registry")


def etl_dag(site: Site, full: bool):
    """The incremental (scheduled) or full-refresh (manual) DAG of one site."""

    @task(execution_timeout=timedelta(minutes=5))
    def plan() -> dict:
        from etl.scheduled import plan_run

        context = get_current_context()
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        return plan_run(_site_dict(site), context["run_id"], start and start.isoformat(), end and end.isoformat(), full)

    @task(pool=site.pool, execution_timeout=timedelta(hours=2), **NETWORK_RETRIES)
    def extract(settings: dict, resource_type: str) -> dict:
        from etl.connections import ConnectionConfigError
        from etl.scheduled import extract as extract_one

        with _reason_kept(ConnectionConfigError):  # a misconfigured connection
            return extract_one(settings, resource_type, _fields(site.fhir_conn_id))

    @task(execution_timeout=timedelta(hours=2), **NETWORK_RETRIES)
    def stage(settings: dict, extracts: list[dict]) -> dict:
        from etl.scheduled import stage as stage_all

        # By index: iterating the lazy sequence asks for one XCom past its end (logged as an error).
        with _reason_kept():
            return stage_all(settings, [extracts[i] for i in range(len(extracts))], _registry(site))

    @task(retries=0, execution_timeout=timedelta(hours=2))
    def load_and_audit(settings: dict, staged: dict) -> dict:
        from etl.pipeline import RunFailed
        from etl.scheduled import load_and_audit as audit

        with _reason_kept(RunFailed):  # failed critical checks
            return audit(settings, _registry(site))

    @task(retries=1, execution_timeout=timedelta(hours=2))
    def map_partition(settings: dict, staged: dict, part: int) -> dict:
        from etl.pipeline import RunFailed
        from etl.scheduled import map_partition as map_one

        with _reason_kept(RunFailed):  # a registry that cannot take partitions
            return map_one(settings, _registry(site), part)

    @task(retries=0, execution_timeout=timedelta(hours=2))
    def audit_partitions(settings: dict, mapped: list[dict]) -> dict:
        from etl.pipeline import RunFailed
        from etl.scheduled import audit_partitions as audit

        with _reason_kept(RunFailed):  # failed critical checks
            return audit(settings, _registry(site), [mapped[i] for i in range(len(mapped))])

    @task(outlets=[registry_asset(site)], execution_timeout=timedelta(minutes=10))
    def publish(settings: dict, staged: dict, audited: dict) -> str:
        from etl.scheduled import finish

        return finish(settings, _registry(site), staged, published=True)

    @task(execution_timeout=timedelta(minutes=10))
    def record_failure(settings: dict) -> str | None:
        from etl.scheduled import finish

        ti = get_current_context()["ti"]
        if ti.xcom_pull(task_ids="publish") is not None:
            return None
        staged = ti.xcom_pull(task_ids="stage")
        reasons = ti.xcom_pull(task_ids=["extract", "stage", "load_and_audit", "map_partition", "audit_partitions"],
                               key="failure") or []
        reasons = [r for r in (reasons if isinstance(reasons, list) else [reasons]) if r]
        return finish(settings, _registry(site), staged, published=False,
                      message="; ".join(dict.fromkeys(reasons)) or "failed before publication (see the task logs)")

    kind = "full_refresh" if full else "incremental"

    @dag(dag_id=f"dlm_registry_{kind}_{site.id}", doc_md=__doc__, max_active_runs=1,
         schedule=None if full else CronDataIntervalTimetable(site.schedule, timezone="UTC"),
         start_date=None if full else _start(site), catchup=False,
         tags=["dlm", "fhir", "omop", site.id], default_args={"owner": "dlm-registry", "retries": 0})
    def pipeline():
        settings = plan()
        extracts = extract.partial(settings=settings).expand(resource_type=resource_types(settings))
        staged = stage(settings, extracts)
        if site.map_partitions > 1:
            mapped = map_partition.partial(settings=settings, staged=staged).expand(
                part=list(range(site.map_partitions)))
            audited = audit_partitions(settings, mapped)
        else:
            audited = load_and_audit(settings, staged)
        published = publish(settings, staged, audited)
        published >> record_failure(settings).as_teardown()

    return pipeline()


@task(execution_timeout=timedelta(minutes=5))
def resource_types(settings: dict) -> list[str]:
    """The run's resource types (known once the plan resolved the site's default)."""
    return settings["types"]


def _start(site: Site):
    from datetime import datetime, timezone

    return datetime.combine(site.start_date, datetime.min.time(), tzinfo=timezone.utc)


def analysis_dag(site: Site):
    @task(execution_timeout=timedelta(hours=1))
    def analyse() -> str:
        from etl.scheduled import analyse as analyse_registry

        return analyse_registry(_registry(site), site.out_dir)

    @dag(dag_id=f"dlm_registry_analysis_{site.id}", doc_md=__doc__, schedule=[registry_asset(site)],
         start_date=_start(site), catchup=False, max_active_runs=1, tags=["dlm", "analysis", site.id],
         default_args={"owner": "dlm-registry", "retries": 1})
    def analysis():
        analyse()

    return analysis()


for _site in load_sites():
    etl_dag(_site, full=False)
    etl_dag(_site, full=True)
    analysis_dag(_site)
