"""A quality check: one great-expectations expectation on one frame, with DQD-style metadata.

A frame is the table-shaped data a check validates: a registry table enriched with what the check needs
(joined parent keys, concept attributes, birth and death dates), or a derived frame such as the DLM rule
frames. Frames are read with SQL and finished in pandas, so the same suites run on every database.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import sqlalchemy as sa


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


@dataclass(frozen=True)
class Frame:
    """How to read one frame: a select, then an optional pandas step (portable date arithmetic)."""
    select: sa.Select | Callable[[sa.Connection], "object"]
    prepare: Callable | None = None

    def read(self, conn: sa.Connection):
        import pandas as pd

        data = self.select(conn) if callable(self.select) else pd.read_sql(self.select, conn)
        return self.prepare(data) if self.prepare else data
