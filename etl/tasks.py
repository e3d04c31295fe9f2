"""Task-sized entry points for orchestrators (Airflow): plain arguments in, JSON-able counts out.

Each function opens the registry from its URL, runs one stage and returns counts and paths only, so
nothing patient-level passes through XCom. They are the same stages `dlmreg run` calls. Dates come
from the orchestrator's run (`today`, ISO date), never from the wall clock, so a re-run of an old
DAG run checks and labels data as that run did.
"""
from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

from etl import pipeline
from etl.dashboard import write_dashboard
from etl.registry import open_registry
from etl.run_lock import registry_lock
from etl.vocabulary import load_code_map

RUN_ID_NAMESPACE = uuid.UUID("6f1c3b1e-2c55-4f0e-9a51-3f1f4b0c7d11")


def resolve_settings(params: dict, orchestrator_run_id: str, today: str) -> dict:
    """Run parameters -> the settings every later task receives (paths and URLs only, no I/O).

    (`started_at` is the one clock reading: when the run began.) An empty `source` means the demo cohort under `<out_dir>/demo_source`; an empty `registry_url`
    means `DLMREG_REGISTRY_URL`, else SQLite in `out_dir`. The registry run id is derived from the
    orchestrator's run id, so clearing and re-running a task keeps the same registry run.
    """
    out_dir = os.path.abspath(params["out_dir"])
    demo = not params.get("source")
    return {
        "run_id": str(uuid.uuid5(RUN_ID_NAMESPACE, orchestrator_run_id)),
        "orchestrator_run_id": orchestrator_run_id,
        "started_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(),
        "today": today,
        "demo": demo,
        "source": os.path.join(out_dir, "demo_source") if demo else params["source"],
        "source_label": pipeline.DEMO_LABEL if demo else params["source"],
        "registry_url": (params.get("registry_url") or os.environ.get("DLMREG_REGISTRY_URL")
                         or f"sqlite:///{os.path.join(out_dir, 'dlm_registry.sqlite')}"),
        "out_dir": out_dir,
        "followup_window_months": float(params.get("followup_window_months", 24.0)),
    }


def materialise_demo_source(directory: str) -> str:
    """Write the demo cohort to `directory` (once) and return it: the default source of the DAG."""
    from etl.synth import write_cohort

    path = Path(directory)
    if not (path / "truth.json").exists():
        write_cohort(path, patients=pipeline.DEMO_PATIENTS, seed=pipeline.DEMO_SEED)
    return str(path)


def stage_task(run_id: str, source: str, registry_url: str, mapping_dirs: list[str] = ()) -> dict:
    with registry_lock(registry_url):
        registry = open_registry(registry_url)
        return pipeline.stage(registry, source, load_code_map(map(Path, mapping_dirs)), run_id, show_progress=False)


def load_audit_task(run_id: str, source: str, registry_url: str, today: str, window_months: float = 24.0,
                    mapping_dirs: list[str] = (), out_dir: str | None = None) -> dict:
    """Map, load, derive and audit in one transaction (write-audit-publish).

    Raises RunFailed naming the failed critical checks, with the audit's `quality` and `lesion_flow` (counts)
    as its `audit`; the registry then keeps its previous state. Raises RegistryBusy while another run writes
    (the task's retries try again later).
    """
    with registry_lock(registry_url):
        registry = open_registry(registry_url)
        mapped = pipeline.load_and_audit(registry, load_code_map(map(Path, mapping_dirs)), run_id, source,
                                         window_months, dt.date.fromisoformat(today), show_progress=False,
                                         data_docs_dir=pipeline.data_docs_for_run(out_dir))
    return _publishable(mapped)


def _publishable(audited: dict) -> dict:
    """The counts an orchestrator passes on from an audit; raises RunFailed (with `quality` and `lesion_flow`
    as its `audit`) when a critical check failed."""
    audit = {"quality": audited["quality"], "lesion_flow": audited["lesion_flow"]}
    if not audited["quality"]["publishable"]:
        raise pipeline.critical_failure(audited["quality"], audit)
    return {"rows": audited["rows"], "lesion_groups": audited["lesion_groups"], "warnings": audited["warnings"],
            "unmapped_codes": len(audited["unmapped_codes"]), **audit}


def map_partition_task(run_id: str, registry_url: str, part: int, parts: int, today: str,
                       window_months: float = 24.0, mapping_dirs: list[str] = ()) -> dict:
    """Scale-out: map, load and derive partition `part` of `parts` and commit it (pipeline.map_partition).

    Sibling partitions run at once (each holds the registry lock shared); a whole run waits for none of
    them but is refused (RegistryBusy) while any is writing. Needs PostgreSQL when `parts` > 1: SQLite takes
    one writer at a time. Returns load_patients' counts.
    """
    registry = open_registry(registry_url)
    if parts > 1 and registry.engine.dialect.name != "postgresql":
        raise pipeline.RunFailed(f"partitioned mapping ({parts} partitions) needs a PostgreSQL registry; "
                                 f"{registry.engine.dialect.name} takes one writer at a time: use map_partitions: 1")
    with registry_lock(registry_url, shared=True):
        return pipeline.map_partition(registry, load_code_map(map(Path, mapping_dirs)), run_id, part, parts,
                                      window_months, dt.date.fromisoformat(today))


def audit_partitions_task(run_id: str, source: str, registry_url: str, today: str, mapped: list[dict],
                          mapping_dirs: list[str] = (), out_dir: str | None = None) -> dict:
    """After every partition of a run committed: global tables and the quality checks (pipeline.audit_partitions).

    Returns what load_audit_task returns, plus `map` (the partitions' counts summed). Raises RunFailed when a
    critical check fails: nothing is analysed or published, but the partitions' rows stay committed.
    """
    with registry_lock(registry_url):
        registry = open_registry(registry_url)
        audited = pipeline.audit_partitions(registry, load_code_map(map(Path, mapping_dirs)), run_id, source,
                                            dt.date.fromisoformat(today),
                                            data_docs_dir=pipeline.data_docs_for_run(out_dir))
    total = {k: sum(m[k] for m in mapped) for k in ("patients", "mapped", "removed", "resources")}
    return {**_publishable(audited), "map": {"partitions": len(mapped), **total}}


def publish_task(run_id: str, registry_url: str, out_dir: str, run_info: dict, quality: dict) -> str:
    """Analyse the published registry and write results.json, report.html and plots; returns the results path."""
    registry = open_registry(registry_url)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"run": {"run_id": run_id, "status": "published", "registry": registry.safe_url, **run_info},
               "quality": quality}
    pipeline.analyse_and_report(registry, out, results)
    return str(pipeline.write_results(out, results))


def record_run_task(settings: dict, run_info: dict, published: bool, failed_step: str | None) -> str:
    """Record the run's outcome in dlm_run and write dashboard.html; a failed run also gets its results.json
    (with the accounting, and the audit's `quality` and `lesion_flow` when the checks ran).

    Called whatever happened upstream, so every run leaves a trace and the accounting is never lost.
    `run_info`: the staged counts, plus `quality` and `lesion_flow` when the audit ran.
    """
    registry = open_registry(settings["registry_url"])
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    status = "published" if published else "failed"
    message = None if published else f"failed at {failed_step}"
    counts = {k: run_info.get(k, 0) for k in ("resources_read", "loaded", "quarantined", "excluded")}
    pipeline.record_run(registry, {"run_id": settings["run_id"],
                                   "started_at": dt.datetime.fromisoformat(settings["started_at"]), "finished_at": now,
                                   "status": status, "source": settings["source_label"], "message": message,
                                   **counts})
    audit = {k: run_info[k] for k in ("quality", "lesion_flow") if k in run_info}
    if not published:
        staged = {k: v for k, v in run_info.items() if k not in audit}
        pipeline.write_results(Path(settings["out_dir"]), {"run": {
            "run_id": settings["run_id"], "source": settings["source_label"], "status": status, "message": message,
            **counts, **staged}, **audit})
    write_dashboard(registry, Path(settings["out_dir"]), settings["run_id"], audit.get("lesion_flow"))
    return status
