"""Check stage: run the quality checks with great-expectations and store one result row per check.

Preconditions: the map and derive stages have loaded the registry. Frames (quality_checks.Frame) are
read with SQL in batches of bounded size (see validate) and validated as pandas dataframes, so the same
suites run on PostgreSQL and SQLite, in memory that does not grow with the registry. A failed critical
check blocks publication of the analysis.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa

from etl.gx_configurations import cached_configurations
from quality_checks import Check, Frame, dlm_plan, dqd_plan
from quality_checks.checks import ROWS

log = logging.getLogger(__name__)
DATA_DOCS_SITE = "registry"


class Counts(NamedTuple):
    """A check's row counts (as CheckResult's), on some rows of the registry."""
    checked: int
    violated: int
    in_domain: int
    missing: int

    def minus(self, other: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(self, other)))


@dataclass
class CheckResult:
    check: Check
    rows_checked: int
    rows_violated: int
    rows_in_domain: int = 0   # the rows the expectation looked at (its row condition applied)
    rows_missing: int = 0     # of those, rows it skipped for a missing value

    @property
    def counts(self) -> Counts:
        return Counts(self.rows_checked, self.rows_violated, self.rows_in_domain, self.rows_missing)

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


# Values (rows x columns read) per great-expectations batch, about: the batch is the audit's peak memory. On
# the 10,000-patient registry 300,000 peaked at 367 MiB, 100,000 at 311 MiB, for 2 s more (23 s to 25 s).
CHUNK_VALUES = 100_000


def validate(conn: sa.Connection, checks: list[Check], frames: dict[str, Frame],
             data_docs_dir: Path | None = None, chunk_values: int = CHUNK_VALUES,
             offsets: dict[str, Counts] | None = None) -> list[CheckResult]:
    """Run the given checks: one great-expectations suite per frame, validated batch by batch.

    `offsets` (by check name) are counts added to a check's own, in its result and its Data Docs: the rest
    of the registry, where the frame holds only some persons' rows (etl.incremental_checks).

    A frame that is a SQL select is never read whole. Its checks are grouped by field (the checks that read
    only concept ids share one group, if its batch is one chunk, and so do those that compare stored
    columns); each group's batches hold only the columns the group reads:
    - counted batches (every check but uniqueness): rows of those columns, each standing for ROWS equal
      rows, about `chunk_values` values at a time. Every such expectation decides a row from that row's
      values alone, so great-expectations' verdict on a counted row holds for all the rows it stands
      for: a check's rows checked and violated are the ROWS summed over the counted rows in its domain
      (row condition, less missing values) and over those great-expectations finds unexpected;
    - ordered batches (uniqueness): the rows in key order, never splitting one key between batches.
    Results are summed over batches, so they are those of one validation of the whole frame. Frames that
    are computed in pandas (`Frame.select` a function) are validated whole; a `few_rows` frame (some
    persons' rows) is validated in row chunks with all its checks but uniqueness at once; where it holds
    `changes`, those are counted batches whose rows removed count negative, rows added positive. A counted
    batch of no rows is not validated: its checks count nothing there (great-expectations' result on no rows).
    """
    import great_expectations.expectations as gxe

    gx, context = _gx_context(data_docs_dir)
    by_frame: dict[str, list[Check]] = {}
    for check in checks:
        by_frame.setdefault(check.frame, []).append(check)
    source = context.data_sources.add_pandas("registry")
    results: dict[str, CheckResult] = {}
    for frame_name, frame_checks in by_frame.items():
        frame = frames[frame_name]
        batch = source.add_dataframe_asset(frame_name).add_batch_definition_whole_dataframe("all")
        expectations = {c.name: getattr(gxe, c.expectation)(**c.kwargs, meta={
            "check": c.name, "severity": c.severity, "threshold_pct": c.threshold_pct}) for c in frame_checks}
        totals = {c.name: _Total() for c in frame_checks}
        first = None
        for group, batches, counted in _batches(conn, frame, frame_checks, chunk_values):
            # Built whole (adding one by one re-saves the suite and merges equal expectations).
            suite = gx.ExpectationSuite(name=f"dlmreg.{frame_name}", expectations=[expectations[c.name] for c in group])
            for data in batches:
                if counted and len(data) == 0:
                    # No counted rows count nothing (every such expectation decides row by row): no validation.
                    # An incremental audit's frames of changes are mostly empty (equal rows cancel out).
                    for check in group:
                        totals[check.name].add(_no_rows(expectations[check.name]), check, None)
                    continue
                outcome, items = _run(batch, suite, data, "BASIC")
                first = first or outcome
                if counted:
                    # Which counted rows are unexpected matters where some, not all, are: ask for those.
                    flagged = [c for c in group if 0 < _unexpected(items[c.name]) < _applicable(items[c.name], c)]
                    if flagged:
                        items |= _run(batch, gx.ExpectationSuite(name=suite.name, expectations=[
                            expectations[c.name] for c in flagged]), data, UNEXPECTED_ROWS)[1]
                for check in group:
                    totals[check.name].add(items[check.name], check, data if counted else None)
        for check in frame_checks:
            total = totals[check.name]
            if offsets and check.name in offsets:
                total.shift(offsets[check.name])
            results[check.name] = CheckResult(check, total.checked, total.violated, total.elements, total.missing)
        if data_docs_dir is not None:
            if first is None:  # every batch was empty: an empty suite's result gives the batch's identity
                first, _ = _run(batch, gx.ExpectationSuite(name=f"dlmreg.{frame_name}"), data, "BASIC")
            _store_for_docs(context, gx, frame_name, frame_checks, expectations, totals, first)
    if data_docs_dir is not None:
        shutil.rmtree(data_docs_dir, ignore_errors=True)  # this run's pages only, not every run's
        context.build_data_docs(site_names=[DATA_DOCS_SITE])
    return [results[c.name] for c in checks]


def _no_rows(expectation):
    """An expectation's result on a batch of no rows, as great-expectations reports it: success, all counts 0."""
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult

    return ExpectationValidationResult(success=True, expectation_config=expectation.configuration, result={
        "element_count": 0, "unexpected_count": 0, "missing_count": 0, "partial_unexpected_list": []})


# All the unexpected rows of a counted batch (their ROWS are summed), not only the first 200.
UNEXPECTED_ROWS = {"result_format": "COMPLETE", "return_unexpected_index_query": False}


def _run(batch, suite, data, result_format) -> tuple:
    """Validate `data` with `suite`: the suite's result, and each expectation's result by check name."""
    with cached_configurations():
        outcome = batch.get_batch(batch_parameters={"dataframe": data}).validate(suite, result_format=result_format)
    items = {}
    for item in outcome.results:
        name = item.expectation_config.meta["check"]
        if item.exception_info and item.exception_info.get("raised_exception"):
            raise RuntimeError(f"quality check {name} could not run: {item.exception_info.get('exception_message')}")
        items[name] = item
    return outcome, items


def _batches(conn: sa.Connection, frame: Frame, checks: list[Check], chunk_values: int):
    """(checks, batches, counted) per group of checks: see validate()."""
    if not frame.selectable:
        yield checks, [frame.read(conn)], False
        return
    known = frame.known_columns
    if frame.few_rows and any(not c.key for c in checks):
        # Every check but uniqueness at once, on row chunks (uniqueness needs its key's rows together).
        rowwise = [c for c in checks if not c.key]
        names = list(dict.fromkeys(n for c in rowwise for n in c.columns(known)))
        rows = max(1, chunk_values // len(frame.sql_columns(names)))
        if frame.changes is not None:  # rows removed and added: negative and positive ROWS
            yield rowwise, frame.changes(conn, rows), True
        else:
            yield rowwise, frame.row_chunks(conn, names, rows), False
        checks = [c for c in checks if c.key]
    shared = [c for c in checks if not c.key and set(frame.sql_columns(c.columns(known))) <= frame.low_cardinality]
    if len(shared) > 1:
        # The checks of concept ids share one counted batch, if it is one chunk.
        batches = _counted(conn, frame, shared, chunk_values)
        data = next(batches)
        if next(batches, None) is None:
            yield shared, [data], True
            checks = [c for c in checks if c not in shared]
        batches.close()
    groups: dict[tuple, list[Check]] = {}
    for check in checks:
        # Checks that compare stored columns (a date with birth, death, the visit, another date) share one
        # group: its rows are about as many as the table's, as are those of each such check.
        compares = not check.key and len(frame.base_columns(check.columns(known))) > 1
        groups.setdefault(("compared",) if compares else (check.field or check.name,), []).append(check)
    for group in list(groups.values()):  # one ordering per group: other uniqueness keys get their own
        keys = list(dict.fromkeys(c.key for c in group if c.key))
        for extra in keys[1:]:
            groups[("key", extra)] = [c for c in group if c.key == extra]
            group[:] = [c for c in group if c.key != extra]
    for group in groups.values():
        key = next((c.key for c in group if c.key), ())
        if key:
            names = list(dict.fromkeys(n for c in group for n in c.columns(known)))
            rows = max(1, chunk_values // len(frame.sql_columns(list(dict.fromkeys([*key, *names])))))
            yield group, frame.ordered_chunks(conn, names, key, rows), False
        else:
            yield group, _counted(conn, frame, group, chunk_values), True


def _counted(conn: sa.Connection, frame: Frame, checks: list[Check], chunk_values: int):
    """Counted batches of the columns `checks` read (text columns only NULL tests read count as NULL or not)."""
    known = frame.known_columns
    names = list(dict.fromkeys(n for c in checks for n in c.columns(known)))
    chunk_rows = max(1, chunk_values // (len(frame.sql_columns(names)) + 1))
    null_tests = {n for c in checks if c.expectation == "ExpectColumnValuesToNotBeNull" for n in c.columns(known)}
    other = {n for c in checks if c.expectation != "ExpectColumnValuesToNotBeNull" for n in c.columns(known)}
    return frame.counted(conn, names, chunk_rows, frozenset(null_tests - other - set(frame.derived)))


class _Total:
    """One check's counts summed over its batches (rows, not counted rows), and its Data Docs statistics."""

    def __init__(self):
        self.checked = self.violated = self.missing = self.elements = 0
        self.success, self.first, self.partial = True, None, []

    def add(self, item, check: Check, counted) -> None:
        stats = item.result or {}
        elements, missing, unexpected = (int(stats.get(k, 0) or 0) for k in
                                         ("element_count", "missing_count", "unexpected_count"))
        if counted is not None:
            elements, missing, unexpected = _row_counts(item, check, counted, elements, missing, unexpected)
        self.elements += elements
        self.missing += missing
        self.checked += elements if check.expectation == "ExpectColumnValuesToNotBeNull" else elements - missing
        self.violated += unexpected
        self.success = self.success and bool(item.success)
        self.partial = (self.partial + list(stats.get("partial_unexpected_list") or []))[:20]
        if self.first is None:
            item.result = {}  # not the lists of a whole batch: Data Docs get the summed statistics
            self.first = item

    def shift(self, offset: Counts) -> None:
        """Add counts found elsewhere (without great-expectations' own verdict, success is: none violated)."""
        self.checked += offset.checked
        self.violated += offset.violated
        self.elements += offset.in_domain
        self.missing += offset.missing
        self.success = self.violated == 0


def _row_counts(item, check: Check, data, elements: int, missing: int, unexpected: int) -> tuple[int, int, int]:
    """A counted batch's element, missing and unexpected counts in rows: each counted row weighs its ROWS.
    The domain (row condition) and the missing values are found as great-expectations' pandas engine
    finds them, and must match its own counts of counted rows."""
    import numpy as np

    kwargs = check.kwargs
    weights = data[ROWS].to_numpy()
    domain = data
    if kwargs.get("row_condition"):
        domain = data.query(kwargs["row_condition"], parser=kwargs.get("condition_parser") or "pandas")
    if check.expectation == "ExpectColumnValuesToNotBeNull" or "column" not in kwargs and "column_A" not in kwargs:
        absent = np.zeros(len(domain), dtype=bool)
    elif "column" in kwargs:
        absent = domain[kwargs["column"]].isna().to_numpy()
    else:
        pair = domain[[kwargs["column_A"], kwargs["column_B"]]].isna()
        how = kwargs.get("ignore_row_if", "both_values_are_missing")
        absent = {"either_value_is_missing": pair.any(axis=1), "both_values_are_missing": pair.all(axis=1)}.get(
            how, pair.any(axis=1) & False).to_numpy()
    rows = weights[domain.index.to_numpy()]
    if unexpected == 0 or unexpected == len(domain) - absent.sum():  # none, or every applicable row
        flagged = domain.index.to_numpy()[~absent] if unexpected else np.zeros(0, dtype=int)
    else:
        flagged = np.asarray(item.result["unexpected_index_list"], dtype=int)
    if (len(domain), int(absent.sum()), len(flagged)) != (elements, missing if check.expectation
                                                          != "ExpectColumnValuesToNotBeNull" else 0, unexpected):
        raise RuntimeError(f"quality check {check.name}: batch counts differ from great-expectations' "
                           f"({len(domain)}, {int(absent.sum())}, {len(flagged)} vs {elements}, {missing}, {unexpected})")
    return int(rows.sum()), int(rows[absent].sum()), int(weights[flagged].sum())


def _unexpected(item) -> int:
    return int((item.result or {}).get("unexpected_count") or 0)


def _applicable(item, check: Check) -> int:
    """The rows an expectation decided (its domain less the missing values it skips)."""
    stats = item.result or {}
    missing = 0 if check.expectation == "ExpectColumnValuesToNotBeNull" else int(stats.get("missing_count") or 0)
    return int(stats.get("element_count") or 0) - missing


def _store_for_docs(context, gx, frame_name: str, checks: list[Check], expectations: dict, totals: dict,
                    first) -> None:
    """The frame's suite and one validation result with the summed counts, for Data Docs."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    suite = context.suites.add(gx.ExpectationSuite(name=f"dlmreg.{frame_name}",
                                                   expectations=[expectations[c.name] for c in checks]))
    items = []
    for check in checks:
        total = totals[check.name]
        item = total.first
        nonmissing = total.elements - total.missing
        item.result = {"element_count": total.elements, "unexpected_count": total.violated,
                       "unexpected_percent": 100.0 * total.violated / nonmissing if nonmissing else None,
                       "partial_unexpected_list": total.partial}
        if check.expectation != "ExpectColumnValuesToNotBeNull":
            item.result |= {"missing_count": total.missing,
                            "missing_percent": 100.0 * total.missing / total.elements if total.elements else None,
                            "unexpected_percent_total": 100.0 * total.violated / total.elements if total.elements
                            else None, "unexpected_percent_nonmissing": item.result["unexpected_percent"]}
        item.success = total.success
        items.append(item)
    passed = sum(1 for i in items if i.success)
    run_id = RunIdentifier(run_time=dt.datetime.now(dt.timezone.utc))
    result = ExpectationSuiteValidationResult(
        success=passed == len(items), results=items, suite_name=suite.name,
        statistics={"evaluated_expectations": len(items), "successful_expectations": passed,
                    "unsuccessful_expectations": len(items) - passed,
                    "success_percent": 100.0 * passed / len(items) if items else None},
        meta=dict(first.meta), batch_id=first.batch_id)
    result.meta |= {"run_id": run_id, "validation_time": run_id.run_time}  # as ValidationDefinition.run
    suite_id = ExpectationSuiteIdentifier(name=suite.name)
    context.validation_results_store.store_validation_results(
        result, ValidationResultIdentifier(batch_identifier=first.batch_id, expectation_suite_identifier=suite_id,
                                           run_id=run_id), suite_id)


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
