"""Check stage: run the quality checks with great-expectations and store one result row per check.

Preconditions: the map and derive stages have loaded the registry. Frames are read with SQL (tables
that a load replaced, plus the DLM rule frames) and validated as pandas dataframes, so the same suites
run on PostgreSQL and SQLite. A failed critical check blocks publication of the analysis.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass

import sqlalchemy as sa

from etl.load import REPLACED_TABLES
from quality_checks import Check, dlm_checks, dqd_checks
from quality_checks import dlm_rules

log = logging.getLogger(__name__)


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
        return {"run_id": run_id, "check_name": c.name, "check_type": c.check_type, "table_name": c.frame,
                "field_name": c.field, "severity": c.severity, "rows_checked": self.rows_checked,
                "rows_violated": self.rows_violated, "pct_violated": self.pct_violated,
                "threshold_pct": c.threshold_pct, "status": "pass" if self.passed else "fail"}


def _gx_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx  # heavy import: only when checks run
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, context


def run_checks(conn: sa.Connection, tables: dict[str, sa.Table], today: dt.date) -> list[CheckResult]:
    """Run every check; returns results in check order."""
    import pandas as pd
    import great_expectations.expectations as gxe

    gx, context = _gx_context()
    selects = {name: sa.select(tables[name]) for name in REPLACED_TABLES}
    selects.update(dlm_rules.frames(tables))
    checks = dqd_checks(set(REPLACED_TABLES), today) + dlm_checks()
    by_frame: dict[str, list[Check]] = {}
    for check in checks:
        by_frame.setdefault(check.frame, []).append(check)
    source = context.data_sources.add_pandas("registry")
    results: dict[str, CheckResult] = {}
    for frame, frame_checks in by_frame.items():
        data = pd.read_sql(selects[frame], conn)
        batch = source.add_dataframe_asset(frame).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"dlmreg.{frame}"))
        for check in frame_checks:
            kwargs = dict(check.kwargs)
            if check.expectation not in ("ExpectCompoundColumnsToBeUnique", "ExpectColumnPairValuesAToBeGreaterThanB"):
                kwargs["column"] = check.field
            suite.add_expectation(getattr(gxe, check.expectation)(**kwargs, meta={"check": check.name}))
        validation = context.validation_definitions.add(gx.ValidationDefinition(name=frame, data=batch, suite=suite))
        outcome = validation.run(batch_parameters={"dataframe": data})
        for item in outcome.results:
            check = next(c for c in frame_checks if c.name == item.expectation_config.meta["check"])
            stats = item.result or {}
            if item.exception_info and item.exception_info.get("raised_exception"):
                raise RuntimeError(f"quality check {check.name} could not run: "
                                   f"{item.exception_info.get('exception_message')}")
            results[check.name] = CheckResult(check, int(stats.get("element_count", len(data)) or 0),
                                              int(stats.get("unexpected_count", 0) or 0))
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
