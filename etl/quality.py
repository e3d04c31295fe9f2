"""Check stage: run the quality checks with great-expectations and store one result row per check.

Preconditions: the map and derive stages have loaded the registry. Frames (quality_checks.Frame) are
read with SQL and validated as pandas dataframes, so the same suites run on PostgreSQL and SQLite. A
failed critical check blocks publication of the analysis.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from quality_checks import Check, Frame, dlm_plan, dqd_plan

log = logging.getLogger(__name__)
DATA_DOCS_SITE = "registry"


@dataclass
class CheckResult:
    check: Check
    rows_checked: int
    rows_violated: int

    @property
    def pct_violated(self) -> float:
        return 100.0 * self.rows_violated / self.rows_checked if self.rows_checked else 0.0

    @property
    def passed(self) -> bool:
        return self.pct_violated <= self.check.threshold_pct

    def as_row(self, run_id: str) -> dict:
        c = self.check
        return {"run_id": run_id, "check_name": c.name, "check_type": c.check_type, "table_name": c.table,
                "field_name": c.field, "severity": c.severity, "rows_checked": self.rows_checked,
                "rows_violated": self.rows_violated, "pct_violated": self.pct_violated,
                "threshold_pct": c.threshold_pct, "status": "pass" if self.passed else "fail"}


def _gx_context(data_docs_dir: Path | None):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx  # heavy import: only when checks run
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if data_docs_dir is not None:
        context.add_data_docs_site(site_name=DATA_DOCS_SITE, site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(data_docs_dir)}})
    return gx, context


def plan(conn: sa.Connection, tables: dict[str, sa.Table], today: dt.date) -> tuple[list[Check], dict[str, Frame]]:
    """Every check that applies to the registry as it is now (DQD first, then the DLM rules)."""
    checks, frames = dqd_plan(conn, tables, today)
    dlm_checks, dlm_frames = dlm_plan(tables)
    return checks + dlm_checks, {**frames, **dlm_frames}


def run_checks(conn: sa.Connection, tables: dict[str, sa.Table], today: dt.date,
               data_docs_dir: Path | None = None) -> list[CheckResult]:
    """Run every check that applies; returns results in check order.

    With `data_docs_dir`, great-expectations Data Docs (suites and validation results) are built there.
    """
    checks, frames = plan(conn, tables, today)
    return validate(conn, checks, frames, data_docs_dir)


def validate(conn: sa.Connection, checks: list[Check], frames: dict[str, Frame],
             data_docs_dir: Path | None = None) -> list[CheckResult]:
    """Run the given checks, one great-expectations suite per frame."""
    import great_expectations.expectations as gxe

    gx, context = _gx_context(data_docs_dir)
    by_frame: dict[str, list[Check]] = {}
    for check in checks:
        by_frame.setdefault(check.frame, []).append(check)
    source = context.data_sources.add_pandas("registry")
    results: dict[str, CheckResult] = {}
    for frame, frame_checks in by_frame.items():
        data = frames[frame].read(conn)
        batch = source.add_dataframe_asset(frame).add_batch_definition_whole_dataframe("all")
        # Built whole (adding one by one re-saves the suite and merges equal expectations).
        suite = context.suites.add(gx.ExpectationSuite(name=f"dlmreg.{frame}", expectations=[
            getattr(gxe, c.expectation)(**c.kwargs, meta={"check": c.name, "severity": c.severity,
                                                          "threshold_pct": c.threshold_pct})
            for c in frame_checks]))
        validation = context.validation_definitions.add(gx.ValidationDefinition(name=frame, data=batch, suite=suite))
        outcome = validation.run(batch_parameters={"dataframe": data}, result_format="BASIC")
        for item in outcome.results:
            check = next(c for c in frame_checks if c.name == item.expectation_config.meta["check"])
            if item.exception_info and item.exception_info.get("raised_exception"):
                raise RuntimeError(f"quality check {check.name} could not run: "
                                   f"{item.exception_info.get('exception_message')}")
            stats = item.result or {}
            checked = int(stats.get("element_count", len(data)) or 0)
            if check.expectation != "ExpectColumnValuesToNotBeNull":
                checked -= int(stats.get("missing_count", 0) or 0)  # rows the rule applies to
            results[check.name] = CheckResult(check, checked, int(stats.get("unexpected_count", 0) or 0))
    if data_docs_dir is not None:
        shutil.rmtree(data_docs_dir, ignore_errors=True)  # this run's pages only, not every run's
        context.build_data_docs(site_names=[DATA_DOCS_SITE])
    return [results[c.name] for c in checks]


def store_results(conn: sa.Connection, tables: dict[str, sa.Table], run_id: str,
                  results: list[CheckResult]) -> None:
    table = tables["dlm_quality_result"]
    conn.execute(table.delete().where(table.c.run_id == run_id))
    if results:
        conn.execute(table.insert(), [r.as_row(run_id) for r in results])


def summary(results: list[CheckResult]) -> dict:
    """The `quality` section of results.json."""
    failed = [r for r in results if not r.passed]
    critical = sorted(r.check.name for r in failed if r.check.severity == "critical")
    warning = sorted(r.check.name for r in failed if r.check.severity == "warning")
    return {
        "checks": len(results), "passed": len(results) - len(failed),
        "failed_critical": len(critical), "failed_warning": len(warning),
        "failed_critical_checks": critical, "failed_warning_checks": warning, "publishable": not critical,
    }
