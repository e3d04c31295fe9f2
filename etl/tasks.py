"""Task-sized entry points for orchestrators (Airflow): plain arguments in, JSON-able counts out.

Each function opens the registry from its URL, runs one stage and returns counts and paths only, so
nothing patient-level passes through XCom. They are the same stages `dlmreg run` calls.
"""
from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from etl import pipeline
from etl.registry import open_registry
from etl.vocabulary import load_code_map


def materialise_demo_source(directory: str) -> str:
    """Write the demo cohort to `directory` (once) and return it: the default source of the DAG."""
    from etl.synth import write_cohort

    path = Path(directory)
    if not (path / "truth.json").exists():
        write_cohort(path, patients=pipeline.DEMO_PATIENTS, seed=pipeline.DEMO_SEED)
    return str(path)


def new_run_id() -> str:
    return str(uuid.uuid4())


def stage_task(run_id: str, source: str, registry_url: str, mapping_dirs: list[str] = ()) -> dict:
    registry = open_registry(registry_url)
    return pipeline.stage(registry, source, load_code_map(map(Path, mapping_dirs)), run_id, show_progress=False)


def map_task(run_id: str, source: str, registry_url: str, window_months: float = 24.0,
             mapping_dirs: list[str] = ()) -> dict:
    registry = open_registry(registry_url)
    mapped = pipeline.map_load_derive(registry, load_code_map(map(Path, mapping_dirs)), run_id, source,
                                      window_months, dt.date.today(), show_progress=False)
    return {"rows": mapped["rows"], "lesion_groups": mapped["lesion_groups"], "warnings": mapped["warnings"],
            "unmapped_codes": len(mapped["unmapped_codes"])}


def check_task(run_id: str, registry_url: str) -> dict:
    """Run the quality checks; raises RunFailed naming the failed critical checks (blocks publication)."""
    quality = pipeline.check(open_registry(registry_url), run_id, dt.date.today())
    if quality["failed_critical"]:
        raise pipeline.RunFailed("critical quality checks failed: " + ", ".join(quality["failed_critical_checks"]))
    return quality


def publish_task(run_id: str, registry_url: str, out_dir: str, run_info: dict, quality: dict) -> str:
    """Analyse the published registry and write results.json, report.html and plots; returns the results path."""
    registry = open_registry(registry_url)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"run": {"run_id": run_id, "status": "published", "registry": registry.safe_url, **run_info},
               "quality": quality}
    pipeline.analyse_and_report(registry, out, results)
    return str(pipeline.write_results(out, results))
