"""Incremental audit: after an incremental load, re-count only the changed persons' rows.

Most checks run on frames whose rows each belong to one person (a clinical table with its joined person,
death and visit dates), and every such expectation but uniqueness decides a row from that row alone. Their
counts are sums over persons, so, with C the persons whose rows the run replaces:

    counts(registry after) = counts(registry before) - counts(C's rows before) + counts(C's rows after)

`dlm_quality_state` holds each check's counts on the registry as committed, written in the same transaction
as the rows (etl.pipeline), so it always describes the committed registry. A check is counted this way only
when its state was counted with the same definition (its fingerprint: the check, the checks' code and the
global rows its joins read, the vocabulary subset). Every other check (uniqueness, checks on frames that
are not per person, a check that is new or changed, such as a date bound that moves with today) runs on
the whole registry, as does every check when no state exists, after a full load or a partitioned load
(which deletes the state), or when more than SCOPE_LIMIT of the persons changed or the registry has fewer
than SCOPE_MIN_PERSONS (a full audit is then cheaper than two partial ones).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

import sqlalchemy as sa

import quality_checks
from etl.quality import CheckResult, Counts, plan, validate
from quality_checks import Check, Frame

log = logging.getLogger(__name__)
SCOPE_LIMIT = 0.2        # share of the registry's persons above which the audit runs in full
# Below this many persons a full audit costs about what the two counts of the changed persons cost (each
# runs every scoped check once, ~10 ms of great-expectations time per check however few the rows): with
# 1% changed, 30 persons took 12 s in full and 14 s scoped, 10,000 persons 26 s in full and 18 s scoped.
SCOPE_MIN_PERSONS = 2_000
SCOPED = "@changed"      # suffix of the frames that hold only the changed persons' rows
_CHECK_CODE = (Path(quality_checks.__file__).parent, Path(__file__).with_name("quality.py"))


def checks_salt(global_rows: dict[str, list[dict]]) -> str:
    """Hash of what a check's counts depend on besides its definition and the persons' rows: the check code
    (quality_checks, its DQD spec CSVs, etl.quality) and the global rows (except cdm_source, which no
    per-person frame reads)."""
    digest = hashlib.sha256()
    for root in _CHECK_CODE:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file() and path.suffix in (".py", ".csv"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    rows = {name: value for name, value in global_rows.items() if name != "cdm_source"}
    digest.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _fingerprint(check: Check, salt: str) -> str:
    return hashlib.sha256(f"{check.fingerprint}:{salt}".encode()).hexdigest()


def read_state(conn: sa.Connection, tables: dict[str, sa.Table]) -> dict[str, tuple[str, Counts]]:
    """The stored counts by check name, with the fingerprint they were counted under."""
    table = tables["dlm_quality_state"]
    return {row.check_name: (row.fingerprint, Counts(row.rows_checked, row.rows_violated, row.rows_in_domain,
                                                     row.rows_missing))
            for row in conn.execute(sa.select(table))}


def write_state(conn: sa.Connection, tables: dict[str, sa.Table], run_id: str, results: list[CheckResult],
                salt: str) -> None:
    """Replace the stored counts with these results (of every check, on the whole registry)."""
    table = tables["dlm_quality_state"]
    conn.execute(table.delete())
    if results:
        conn.execute(table.insert(), [
            {"check_name": r.check.name, "fingerprint": _fingerprint(r.check, salt), "rows_in_domain": r.rows_in_domain,
             "rows_missing": r.rows_missing, "rows_checked": r.rows_checked, "rows_violated": r.rows_violated,
             "run_id": run_id} for r in results])


def clear_state(conn: sa.Connection, tables: dict[str, sa.Table]) -> None:
    """Forget the stored counts (a load that is not audited in its own transaction changed the registry)."""
    conn.execute(tables["dlm_quality_state"].delete())


class IncrementalChecks:
    """The checks of one write-audit-publish transaction: `before` counts the changed persons' rows before
    the load replaces them, `run` counts them after and runs the rest on the whole registry."""

    def __init__(self, conn: sa.Connection, tables: dict[str, sa.Table], today: dt.date, salt: str):
        self.conn, self.tables, self.today, self.salt = conn, tables, today, salt
        self.before_counts: dict[str, Counts] = {}
        self.persons_before = 0
        self.scoped_run = False

    def before(self, person_ids: list[int]) -> None:
        """Count the rows of `person_ids` (the persons whose rows are about to be deleted), with every check
        the stored state allows to update; does nothing when that is none or too many persons changed."""
        state = read_state(self.conn, self.tables)
        persons = self.conn.execute(sa.select(sa.func.count()).select_from(self.tables["person"])).scalar_one()
        if not state or persons < SCOPE_MIN_PERSONS or len(person_ids) > SCOPE_LIMIT * persons:
            log.info("audit: in full (%s)", "no stored counts" if not state else "few persons in the registry"
                     if persons < SCOPE_MIN_PERSONS else "many persons changed")
            return
        self.scoped_run = True
        self.persons_before = len(person_ids)
        checks, frames = plan(self.conn, self.tables, self.today)
        eligible = [_scoped(c) for c in checks if frames[c.frame].scoped is not None and not c.key
                    and state.get(c.name, ("",))[0] == _fingerprint(c, self.salt)]
        with self._scope(person_ids) as scope:
            results = validate(self.conn, eligible, _scoped_frames(frames, scope))
        self.before_counts = {r.check.name: r.counts for r in results}

    def run(self, run_id: str, data_docs_dir: Path | None) -> tuple[list[CheckResult], dict]:
        """Every check on the registry as it is now, and how it was counted (`scope`, for results.json)."""
        checks, frames = plan(self.conn, self.tables, self.today)
        state = read_state(self.conn, self.tables) if self.scoped_run else {}
        merged = {c.name for c in checks if c.name in self.before_counts
                  and state.get(c.name, ("",))[0] == _fingerprint(c, self.salt)}
        digest = self.tables["dlm_patient_digest"]
        changed = [p for p in self.conn.execute(sa.select(digest.c.person_id).where(
            digest.c.run_id == run_id, digest.c.person_id.is_not(None))).scalars()]
        # the rest of the registry: its counts before, less those of the changed persons' rows before
        offsets = {name: state[name][1].minus(self.before_counts[name]) for name in merged}
        with self._scope(changed if merged else []) as scope:
            planned = [_scoped(c) if c.name in merged else c for c in checks]
            results = validate(self.conn, planned, {**frames, **_scoped_frames(frames, scope)}, data_docs_dir,
                               offsets=offsets)
        results = [dataclasses.replace(r, check=c) for r, c in zip(results, checks)]
        scope_summary = {"mode": "changed persons" if merged else "full", "checks_on_changed_persons": len(merged),
                         "checks_on_whole_registry": len(checks) - len(merged),
                         "persons_rechecked": {"before": self.persons_before if merged else 0,
                                               "after": len(changed) if merged else 0}}
        return results, scope_summary

    def _scope(self, person_ids: list[int]):
        return _Scope(self.conn, self.tables["dlm_check_scope"], person_ids)


def _scoped(check: Check) -> Check:
    return dataclasses.replace(check, frame=check.frame + SCOPED)


def _scoped_frames(frames: dict[str, Frame], scope: sa.Select) -> dict[str, Frame]:
    return {name + SCOPED: frame.scoped(scope) for name, frame in frames.items() if frame.scoped is not None}


class _Scope:
    """The persons being counted, in dlm_check_scope for the duration of the block (a select of their ids)."""

    def __init__(self, conn: sa.Connection, table: sa.Table, person_ids: list[int]):
        self.conn, self.table, self.person_ids = conn, table, sorted(set(person_ids))

    def __enter__(self) -> sa.Select:
        self.conn.execute(self.table.delete())
        if self.person_ids:
            self.conn.execute(self.table.insert(), [{"person_id": p} for p in self.person_ids])
        return sa.select(self.table.c.person_id)

    def __exit__(self, *exc) -> None:
        self.conn.execute(self.table.delete())
