"""Entry points of the per-site DAGs (`dags/dlm_sites.py`): plain arguments in, counts and paths out.

A scheduled run reads one data interval: `since` and `until` come from the orchestrator's interval,
never from the clock, so a re-run or a backfill of an old interval reads exactly that interval. A full
refresh reads everything and stages it as a snapshot. Connection fields arrive as plain dicts (see
etl.connections); nothing patient-level is returned.
"""
from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

from etl import pipeline
from etl.connections import fhir_endpoint
from etl.dashboard import write_dashboard
from etl.extract.window import WindowSource, extract_type
from etl.registry import open_registry
from etl.run_lock import registry_lock
from etl.stage import Pseudonymizer, stage_source
from etl.tasks import audit_partitions_task, load_audit_task, map_partition_task
from etl.transform import SUPPORTED_TYPES
from etl.vocabulary import load_code_map

RUN_ID_NAMESPACE = uuid.UUID("0b7e4d52-8a1f-4c8e-9a57-5d2f3f1e6a20")


def plan_run(site: dict, orchestrator_run_id: str, interval_start: str | None, interval_end: str | None,
             full: bool) -> dict:
    """The run's settings. `site` is an etl.sites.Site as a dict; types default to every mapped type."""
    types = list(site["resource_types"]) or sorted(SUPPORTED_TYPES)
    unsupported = sorted(set(types) - SUPPORTED_TYPES)
    if unsupported:
        raise ValueError(f"site {site['id']}: resource types the registry does not map: {unsupported}")
    if not full and not (interval_start and interval_end):
        raise ValueError(f"site {site['id']}: an incremental run needs its data interval")
    run_id = str(uuid.uuid5(RUN_ID_NAMESPACE, f"{site['id']}/{orchestrator_run_id}"))
    today = dt.datetime.fromisoformat(interval_end).date() if interval_end else dt.date.today()
    return {
        "site": site["id"], "run_id": run_id, "orchestrator_run_id": orchestrator_run_id, "full": full,
        "since": None if full else interval_start, "until": None if full else interval_end,
        "types": types, "today": today.isoformat(),
        "started_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(),
        "work_dir": os.path.join(site["out_dir"], "extract", run_id), "out_dir": site["out_dir"],
        "page_size": site["page_size"], "overlap_seconds": site["overlap_seconds"],
        "followup_window_months": site["followup_window_months"], "map_partitions": site.get("map_partitions", 1),
        "label": f"site {site['id']} " + ("full refresh" if full else f"{interval_start} .. {interval_end}"),
    }


def extract(plan: dict, resource_type: str, fhir: dict) -> dict:
    """One resource type of the run's window, written under the run's work directory."""
    base, auth, verify = fhir_endpoint(**fhir)
    return extract_type(base, resource_type, plan["work_dir"], since=plan["since"], until=plan["until"], auth=auth,
                        verify=verify, page_size=plan["page_size"], overlap_seconds=plan["overlap_seconds"])


def stage(plan: dict, extracts: list[dict], registry: str, mapping_dirs: list[str] = ()) -> dict:
    """Stage the run's extracts together (one transaction, with the new watermarks); returns the accounting."""
    opened = open_registry(registry)
    pipeline.record_run(opened, _run_row(plan, "running"))
    with registry_lock(registry):
        accounting = stage_source(opened.engine, opened.tables, WindowSource(extracts, snapshot=plan["full"]),
                                  load_code_map(map(Path, mapping_dirs)), Pseudonymizer(), plan["run_id"],
                                  SUPPORTED_TYPES, show_progress=False)
    return {**accounting.as_dict(), "extract": {
        "resources": sum(e["resources"] for e in extracts), "unreadable_pages": sum(e["unreadable_pages"] for e in extracts),
        "incomplete": sorted(e["resource_type"] for e in extracts if not e["complete"]),
        "duplicates": sum(e["duplicates"] for e in extracts)}}


def load_and_audit(plan: dict, registry: str, mapping_dirs: list[str] = ()) -> dict:
    """Write-audit-publish; raises pipeline.RunFailed naming the failed critical checks."""
    return load_audit_task(plan["run_id"], plan["label"], registry, plan["today"], plan["followup_window_months"],
                           mapping_dirs, out_dir=plan["out_dir"])


def map_partition(plan: dict, registry: str, part: int, mapping_dirs: list[str] = ()) -> dict:
    """One patient-key partition of the run's mapping (plan["map_partitions"] of them), committed."""
    return map_partition_task(plan["run_id"], registry, part, plan["map_partitions"], plan["today"],
                              plan["followup_window_months"], mapping_dirs)


def audit_partitions(plan: dict, registry: str, mapped: list[dict], mapping_dirs: list[str] = ()) -> dict:
    """The checks once every partition committed; raises pipeline.RunFailed naming failed critical checks."""
    return audit_partitions_task(plan["run_id"], plan["label"], registry, plan["today"], mapped, mapping_dirs,
                                 out_dir=plan["out_dir"])


def finish(plan: dict, registry: str, staged: dict | None, published: bool, message: str | None = None) -> str:
    """Record the run's outcome in dlm_run (published or failed, with its accounting)."""
    counts = {k: (staged or {}).get(k, 0) for k in ("resources_read", "loaded", "quarantined", "excluded")}
    status = "published" if published else "failed"
    pipeline.record_run(open_registry(registry), {**_run_row(plan, status), **counts, "message": message,
                                                 "finished_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)})
    return status


def _run_row(plan: dict, status: str) -> dict:
    return {"run_id": plan["run_id"], "started_at": dt.datetime.fromisoformat(plan["started_at"]), "status": status,
            "source": plan["label"]}


def analyse(registry: str, out_dir: str) -> str:
    """Results, report and dashboard of the registry's latest published run; returns the results path."""
    import sqlalchemy as sa

    opened = open_registry(registry)
    runs = opened.tables["dlm_run"]
    with opened.engine.connect() as conn:
        latest = conn.execute(sa.select(runs).where(runs.c.status == "published")
                              .order_by(runs.c.finished_at.desc()).limit(1)).mappings().first()
    if latest is None:
        raise pipeline.RunFailed("the registry has no published run to analyse")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"run": {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in latest.items()}}
    pipeline.analyse_and_report(opened, out, results)
    path = pipeline.write_results(out, results)
    write_dashboard(opened, out, latest["run_id"], results.get("lesion_flow"))
    return str(path)
