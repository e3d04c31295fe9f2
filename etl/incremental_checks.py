"""Incremental audit: after an incremental load, re-count only the changed persons' rows.

Most checks run on frames whose rows each belong to one person (a clinical table with its joined person,
death and visit dates), and every such expectation but uniqueness decides a row from that row alone. Their
counts are sums over persons, so, with C the persons whose rows the run replaces:

    counts(registry after) = counts(registry before) - counts(C's rows before) + counts(C's rows after)

The last two terms are one validation: C's rows are read before the load deletes them (the columns the
checks read, kept in a private temporary directory for the length of the transaction, so memory does not
grow with C) and validated with C's rows after as counted rows that count -1 and +1 (etl.quality).
`dlm_quality_state` holds each check's counts on the registry as committed, written in the same transaction
as the rows (etl.pipeline), so it always describes the committed registry. A check is counted this way only
when its state was counted with the same definition (its fingerprint: the check, the checks' code and the
global rows its joins read, the vocabulary subset). A uniqueness check of one column is updated from the
rows that share a value with the changed persons' rows (_Retired.key_frames). Every other check
(uniqueness of several columns, checks on frames that are not per person, a check that is new or
changed, such as a date bound that moves with today) runs on the whole registry, as does every check when
no state exists, after a full load or a partitioned load (which deletes the state), or when more than
SCOPE_LIMIT of the persons changed or the registry has fewer than SCOPE_MIN_PERSONS (a full audit then
costs about what the partial one costs).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import logging
import pickle
import tempfile
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

import quality_checks
from etl.load import LOOKUP_CHUNK
from etl.quality import CheckResult, Counts, plan, validate
from quality_checks import Check, Frame
from quality_checks.checks import ROWS

log = logging.getLogger(__name__)
SCOPE_LIMIT = 0.2        # share of the registry's persons above which the audit runs in full
# Below this many persons a full audit costs about what the count of the changed persons costs (it runs
# every scoped check once, ~10 ms of great-expectations time per check however few the rows): at 949
# persons with 1% changed, on PostgreSQL, map and audit took 25.6 s scoped and 28.5 s in full.
SCOPE_MIN_PERSONS = 500
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
    """The checks of one write-audit-publish transaction: `before` keeps the changed persons' rows before the
    load replaces them, `run` counts them with their rows after, in one validation, and runs the rest on
    the whole registry."""

    def __init__(self, conn: sa.Connection, tables: dict[str, sa.Table], today: dt.date, salt: str):
        self.conn, self.tables, self.today, self.salt = conn, tables, today, salt
        self.retired: _Retired | None = None
        self.persons_before = 0

    def before(self, person_ids: list[int]) -> None:
        """Keep the rows of `person_ids` (the persons whose rows are about to be deleted) that the checks the
        stored state allows to update read; does nothing when that is none or too many persons changed."""
        state = read_state(self.conn, self.tables)
        persons = self.conn.execute(sa.select(sa.func.count()).select_from(self.tables["person"])).scalar_one()
        if not state or persons < SCOPE_MIN_PERSONS or len(person_ids) > SCOPE_LIMIT * persons:
            log.info("audit: in full (%s)", "no stored counts" if not state else "few persons in the registry"
                     if persons < SCOPE_MIN_PERSONS else "many persons changed")
            return
        self.persons_before = len(person_ids)
        checks, frames = plan(self.conn, self.tables, self.today)
        eligible: dict[str, list[Check]] = {}
        for c in checks:
            if frames[c.frame].scoped is not None and (not c.key or _one_column_key(c)) and _updatable(
                    c, state, self.salt):
                eligible.setdefault(_scoped_frame(c), []).append(c)
        self.retired = _Retired()
        with self._scope(person_ids) as scope:
            for label, label_checks in eligible.items():
                frame = frames[label_checks[0].frame]
                self.retired.keep(self.conn, label, frame.scoped(scope), label_checks)

    def run(self, run_id: str, data_docs_dir: Path | None) -> tuple[list[CheckResult], dict]:
        """Every check on the registry as it is now, and how it was counted (`scope`, for results.json)."""
        checks, frames = plan(self.conn, self.tables, self.today)
        retired, self.retired = self.retired, None
        state = read_state(self.conn, self.tables) if retired else {}
        merged = {c.name for c in checks if retired and retired.holds(c) and _updatable(c, state, self.salt)}
        digest = self.tables["dlm_patient_digest"]
        changed = [p for p in self.conn.execute(sa.select(digest.c.person_id).where(
            digest.c.run_id == run_id, digest.c.person_id.is_not(None))).scalars()]
        # the registry before, to which the changed persons' rows add their counts after less those before
        offsets = {name: state[name][1] for name in merged}
        try:
            with self._scope(changed) if merged else contextlib.nullcontext() as scope:
                planned = [_scoped(c) if c.name in merged else c for c in checks]
                frames |= {name: retired.changes(name, frames[_unscoped(name)].scoped(scope))
                           for name in {c.frame for c in planned if c.name in merged and not c.key}}
                unique = [c for c in planned if c.key and c.name in merged]
                earlier = {}
                for check in unique:
                    earlier[check.frame], frames[check.frame] = retired.key_frames(
                        self.conn, check, frames[_unscoped(check.frame)], scope)
                for counted in validate(self.conn, unique, earlier) if unique else []:
                    offsets[counted.check.name] = offsets[counted.check.name].minus(counted.counts)
                results = validate(self.conn, planned, frames, data_docs_dir, offsets=offsets)
        finally:
            if retired:
                retired.close()
        results = [dataclasses.replace(r, check=c) for r, c in zip(results, checks)]
        scope_summary = {"mode": "changed persons" if merged else "full", "checks_on_changed_persons": len(merged),
                         "checks_on_whole_registry": len(checks) - len(merged),
                         "persons_rechecked": {"before": self.persons_before if merged else 0,
                                               "after": len(changed) if merged else 0}}
        return results, scope_summary

    def _scope(self, person_ids: list[int]):
        return _Scope(self.conn, self.tables["dlm_check_scope"], person_ids)


def _updatable(check: Check, state: dict[str, tuple[str, Counts]], salt: str) -> bool:
    """Whether the stored counts of `check` were counted with its present definition."""
    return state.get(check.name, ("",))[0] == _fingerprint(check, salt)


def _one_column_key(check: Check) -> bool:
    """A uniqueness check of one column on every row: its counts can be updated from the rows that share a
    value with the changed persons' rows (_Retired.key_frames)."""
    return check.expectation == "ExpectColumnValuesToBeUnique" and not check.kwargs.get("row_condition")


def _scoped_frame(check: Check) -> str:
    """The frame a check runs on when counted on the changed persons (its frame's, or for uniqueness its
    own), under which `_Retired` keeps the rows it reads."""
    return f"{check.frame}{SCOPED}{check.name if check.key else ''}"


def _scoped(check: Check) -> Check:
    return dataclasses.replace(check, frame=_scoped_frame(check))


def _unscoped(frame: str) -> str:
    return frame.split(SCOPED, 1)[0]


class _Retired:
    """The changed persons' rows as they were before the load: per frame, the columns its updatable checks
    read (per uniqueness check, its key column), as the database returned them, in a private temporary
    directory (deleted by `close`, or when the object is collected), so that memory stays bounded by a
    chunk whatever the number of persons.

    A row kept and an equal row now (most of a changed person's rows: a patient with one new resource is
    re-mapped whole) count -1 and +1 whatever the checks find: they cancel out before validation, in memory
    for frames of up to CANCEL_ROWS kept rows (larger frames are validated with every row)."""

    PART_ROWS = 20_000
    CANCEL_ROWS = 50_000

    def __init__(self):
        self._directory = tempfile.TemporaryDirectory(prefix="dlmreg-audit-")
        self._kept: dict[str, _Kept] = {}

    def keep(self, conn: sa.Connection, name: str, frame: Frame, checks: list[Check]) -> None:
        names = list(dict.fromkeys(n for c in checks for n in c.columns(frame.known_columns)))
        path = Path(self._directory.name) / f"{len(self._kept)}.pickle"
        rows = 0
        with path.open("wb") as out:
            for part in frame.raw_rows(conn, names, self.PART_ROWS)[1]:
                pickle.dump([tuple(row) for row in part], out, protocol=pickle.HIGHEST_PROTOCOL)
                rows += len(part)
        self._kept[name] = _Kept(names, {c.name for c in checks}, path, rows)

    def holds(self, check: Check) -> bool:
        kept = self._kept.get(_scoped_frame(check))
        return kept is not None and check.name in kept.checks

    def key_frames(self, conn: sa.Connection, check: Check, frame: Frame, scope: sa.Select) -> tuple[Frame, Frame]:
        """For a uniqueness check of one column (scoped: kept under check.frame): the key values of the rows that
        can have changed its counts, before and after the load, as two frames. Those rows are the changed
        persons' rows, and every row sharing a value with them; rows with other values kept their counts.
        Before the load, the rows of a value were those of the registry now, less the changed persons'
        rows now, plus theirs before (those are kept). The values are counted in memory: one integer or so
        per changed person's row of the table (at most SCOPE_LIMIT of the persons)."""
        import pandas as pd

        (key,) = check.key
        before = collections.Counter(row[0] for row in self._kept[check.frame].rows_from_file())
        after = collections.Counter(row[0] for part in frame.scoped(scope).raw_rows(conn, [key], self.PART_ROWS)[1]
                                    for row in part)
        values = sorted((set(before) | set(after)) - {None})
        select = frame.columns_select([key])
        column = select.selected_columns[key]
        registry: collections.Counter = collections.Counter()
        for start in range(0, len(values), LOOKUP_CHUNK):
            registry.update(conn.execute(select.where(column.in_(values[start:start + LOOKUP_CHUNK]))).scalars())
        earlier = {v: registry[v] - after[v] + before[v] for v in values}

        def frame_of(counts: dict, missing: int) -> Frame:
            rows = [v for v, n in counts.items() for _ in range(n)] + [None] * missing
            data = pd.DataFrame({key: pd.Series(rows, dtype=object)})
            return Frame(lambda _conn: data.infer_objects())

        return frame_of(earlier, before[None]), frame_of({v: registry[v] for v in values}, after[None])

    def changes(self, name: str, frame: Frame) -> Frame:
        """`frame` (the changed persons' rows now) as a frame of changes: these rows less the kept ones."""
        kept = self._kept[name]

        def chunks(conn: sa.Connection, chunk_rows: int) -> Iterator:
            import pandas as pd

            columns, now = frame.raw_rows(conn, kept.names, chunk_rows)
            rows = (_net(kept.rows_from_file(), now) if kept.rows <= self.CANCEL_ROWS else itertools.chain(
                (row + (-1,) for row in kept.rows_from_file()), (tuple(row) + (1,) for part in now for row in part)))
            chunk = list(itertools.islice(rows, chunk_rows))
            while True:  # one chunk, empty if no rows, so that every check has a result
                data = pd.DataFrame.from_records(chunk, columns=[*columns, ROWS], coerce_float=True)
                yield frame.prepare(data) if frame.prepare else data
                chunk = list(itertools.islice(rows, chunk_rows))
                if not chunk:
                    return

        return dataclasses.replace(frame, changes=chunks)

    def close(self) -> None:
        self._directory.cleanup()


@dataclasses.dataclass
class _Kept:
    names: list[str]     # the frame columns read
    checks: set[str]     # the checks they were read for
    path: Path
    rows: int

    def rows_from_file(self) -> Iterator[tuple]:
        with self.path.open("rb") as kept:
            while True:
                try:
                    yield from pickle.load(kept)
                except EOFError:
                    return


def _net(before: Iterator[tuple], now: Iterator[list]) -> Iterator[tuple]:
    """The rows of `now` and `before` that are not in the other (as many times as they are in excess), with
    their ROWS: +1 for each row added, minus its excess for each row removed."""
    removed = collections.Counter(before)
    for part in now:
        for row in map(tuple, part):
            if removed[row] > 0:
                removed[row] -= 1
            else:
                yield row + (1,)
    yield from (row + (-excess,) for row, excess in removed.items() if excess)


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
