"""A quality check: one great-expectations expectation on one frame, with DQD-style metadata.

A frame is the table-shaped data a check validates: a registry table enriched with what the check needs
(joined parent keys, concept attributes, birth and death dates), or a derived frame such as the DLM rule
frames. Frames are read with SQL and finished in pandas, so the same suites run on every database.

A frame that is a select is never read whole by the check stage (`etl.quality`): each group of checks
(the checks of one field, or of the concept ids of a table) reads only the columns it needs. Every
expectation here except uniqueness decides a row from that row's values alone, so equal rows get equal
verdicts: the group reads counted rows, each standing for ROWS equal rows (`Frame.counted`, a GROUP BY),
in chunks of bounded size. A uniqueness group reads its rows ordered by the key, in chunks that never
split a key (`Frame.ordered_chunks`). Memory is bounded by the chunk size, not by the table.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import sqlalchemy as sa

ROWS = "_rows"  # how many equal rows a counted row stands for
UNIQUENESS = frozenset({"ExpectColumnValuesToBeUnique", "ExpectCompoundColumnsToBeUnique"})


@dataclass(frozen=True)
class Check:
    name: str                 # unique, stable across runs (trends are queried by it)
    check_type: str           # DQD check name (isRequired, ...) or a DLM rule id
    frame: str                # the name of the frame the expectation runs on
    field: str | None
    severity: str             # critical (blocks publication) | warning
    threshold_pct: float      # fail when the violated percentage exceeds this
    expectation: str          # great_expectations.expectations class name
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    description: str = ""

    @property
    def table(self) -> str:
        """The registry table the check is about (DQD check names read `type:table[.field][:...]`)."""
        return self.name.split(":")[1].split(".")[0] if self.frame.startswith("dqd:") else self.frame

    @property
    def key(self) -> tuple[str, ...]:
        """The columns a uniqueness check is about (empty for every other check)."""
        if self.expectation not in UNIQUENESS:
            return ()
        return tuple(self.kwargs.get("column_list") or [self.kwargs["column"]])

    @property
    def fingerprint(self) -> str:
        """What decides the check's result on given rows: its frame, expectation, arguments and threshold."""
        definition = [self.frame, self.field, self.severity, self.threshold_pct, self.expectation, self.kwargs]
        return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()

    def columns(self, known: set[str]) -> list[str]:
        """The frame columns the expectation reads (its row condition's columns included)."""
        names = [self.kwargs[k] for k in ("column", "column_A", "column_B") if k in self.kwargs]
        names += list(self.kwargs.get("column_list", ()))
        names += [w for w in re.findall(r"[A-Za-z_]\w*", self.kwargs.get("row_condition", "")) if w in known]
        return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Frame:
    """How to read one frame: a select, then an optional pandas step (portable date arithmetic).

    `select` is either a SQL select or a function of the connection returning a dataframe (small frames
    that are computed, not selected: they are read whole). `derived` names the columns the pandas step
    adds and the selected columns each is computed from; `narrow`, given selected column names, returns a
    select of just those that joins only what they need (default: a select from the whole select), and
    `counted_select` their counted rows (default: a GROUP BY of that select). The checks that read only
    `low_cardinality` columns can share one batch, and so can the checks that compare stored columns
    (`bases`: the stored columns each selected column is computed from; by default itself). `scoped`, given a
    select of person ids, returns the frame of just those persons' rows (frames whose rows each belong to
    one person, so that a check's counts are sums over persons; None otherwise). Such a frame is
    `few_rows`: a few persons' rows cost less to read once, with every column, than per check group.
    """
    select: sa.Select | Callable[[sa.Connection], "object"]
    prepare: Callable | None = None
    derived: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)
    narrow: Callable[[list[str]], sa.Select] | None = field(default=None, hash=False, compare=False)
    counted_select: Callable[[list[str], frozenset[str]], sa.Select] | None = field(default=None, hash=False,
                                                                                 compare=False)
    low_cardinality: frozenset[str] = frozenset()  # selected columns with few distinct values (concept ids)
    bases: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)
    scoped: Callable[[sa.Select], "Frame"] | None = field(default=None, hash=False, compare=False)
    few_rows: bool = False  # a frame of some persons' rows: all its checks read its rows together (row_chunks)
    # A few_rows frame of changes: given the connection and a chunk size in rows, finished chunks of the
    # rows removed (negative ROWS) and the rows added (positive), in place of row_chunks
    # (etl.incremental_checks).
    changes: Callable[[sa.Connection, int], Iterator] | None = field(default=None, hash=False, compare=False)

    def base_columns(self, names: list[str]) -> set[str]:
        """The stored columns `names` (selected or derived) are computed from."""
        return {b for c in self.sql_columns(names) for b in self.bases.get(c, (c,))}

    def read(self, conn: sa.Connection):
        """The whole frame as one dataframe (small frames, tests)."""
        import pandas as pd

        data = self.select(conn) if callable(self.select) else pd.read_sql(self.select, conn)
        return self.prepare(data) if self.prepare else data

    @property
    def selectable(self) -> bool:
        """True when the frame is a SQL select, so that check groups can read parts of it."""
        return isinstance(self.select, sa.Select)

    @property
    def known_columns(self) -> set[str]:
        return set(self.select.selected_columns.keys()) | set(self.derived) if self.selectable else set()

    def sql_columns(self, names: list[str]) -> list[str]:
        """The selected columns that `names` (selected or derived) need, in frame order."""
        wanted = set()
        for name in names:
            wanted.update(self.derived.get(name, (name,)))
        missing = wanted - set(self.select.selected_columns.keys())
        if missing:
            raise KeyError(f"not in the frame: {sorted(missing)}")
        return [c for c in self.select.selected_columns.keys() if c in wanted]

    def columns_select(self, names: list[str]) -> sa.Select:
        """A select of the selected columns `names` need."""
        columns = self.sql_columns(names)
        if self.narrow is not None:
            return self.narrow(columns)
        whole = self.select.subquery("frame_")
        return sa.select(*[whole.c[c] for c in columns])

    def counted(self, conn: sa.Connection, names: list[str], chunk_rows: int,
                nullness_only: frozenset[str] = frozenset()) -> Iterator:
        """The rows of the columns `names` need, counted (ROWS: how many equal rows each stands for), in
        chunks of at most `chunk_rows` counted rows, finished by the pandas step. Text columns that only NULL
        tests read (`nullness_only`: note texts, for example) count as NULL or not, keeping one value."""
        import pandas as pd

        statement = (self.counted_select(self.sql_columns(names), nullness_only) if self.counted_select
                     else self._counted_select(names, nullness_only))
        statement = statement.execution_options(stream_results=True, max_row_buffer=chunk_rows)
        for data in pd.read_sql(statement, conn, chunksize=chunk_rows):
            yield self.prepare(data) if self.prepare else data

    def _counted_select(self, names: list[str], nullness_only: frozenset[str]) -> sa.Select:
        part = self.columns_select(names).subquery("part_")
        keys, values = [], []
        for column in part.c:
            if column.name in nullness_only and isinstance(column.type, sa.String):
                keys.append(column.is_(None))
                values.append(sa.func.min(column).label(column.name))
            else:
                keys.append(column)
                values.append(column)
        return sa.select(*values, sa.func.count().label(ROWS)).group_by(*keys)

    def row_chunks(self, conn: sa.Connection, names: list[str], chunk_rows: int) -> Iterator:
        """The rows of the columns `names` need, as they are (not counted), in chunks of `chunk_rows` rows."""
        import pandas as pd

        statement = self.columns_select(names).execution_options(stream_results=True, max_row_buffer=chunk_rows)
        for data in pd.read_sql(statement, conn, chunksize=chunk_rows):
            yield self.prepare(data) if self.prepare else data

    def raw_rows(self, conn: sa.Connection, names: list[str], chunk_rows: int) -> tuple[list[str], Iterator[list]]:
        """The selected columns `names` need, and their rows as the database returns them (not finished by
        the pandas step), in lists of at most `chunk_rows` rows."""
        result = conn.execute(self.columns_select(names).execution_options(yield_per=chunk_rows))
        return list(result.keys()), (list(part) for part in result.partitions())

    def ordered_chunks(self, conn: sa.Connection, names: list[str], key: tuple[str, ...], chunk_rows: int) -> Iterator:
        """The rows of the columns `names` need, ordered by `key`, in chunks of about `chunk_rows` rows that
        never split the rows of one key value between two chunks (so uniqueness is decided per chunk)."""
        import pandas as pd

        part = self.columns_select(list(dict.fromkeys([*key, *names]))).subquery("part_")
        statement = (sa.select(*part.c).order_by(*[part.c[k] for k in key])
                     .execution_options(stream_results=True, max_row_buffer=chunk_rows))
        carry = None
        for data in pd.read_sql(statement, conn, chunksize=chunk_rows):
            if carry is not None and len(carry):
                data = pd.concat([carry, data], ignore_index=True)
            carry = data.iloc[_last_key_start(data, key):]
            if len(carry) < len(data):
                done = data.iloc[:len(data) - len(carry)].reset_index(drop=True)
                yield self.prepare(done) if self.prepare else done
        if carry is not None:
            rest = carry.reset_index(drop=True)
            yield self.prepare(rest) if self.prepare else rest


def _last_key_start(data, key: tuple[str, ...]) -> int:
    """Where the run of rows sharing the last row's key starts (NULL equals NULL, as pandas' duplicated)."""
    import pandas as pd

    if not len(data):
        return 0
    same = None
    for column in key:
        values, last = data[column], data[column].iloc[-1]
        equal = values.isna() if pd.isna(last) else (values == last).fillna(False)
        same = equal if same is None else same & equal
    different = (~same.to_numpy()).nonzero()[0]
    return int(different[-1]) + 1 if len(different) else 0
