"""A quality check: one great-expectations expectation on one frame, with DQD-style metadata."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    name: str                 # unique, stable across runs (trends are queried by it)
    check_type: str           # DQD check name (isRequired, ...) or a DLM rule id
    frame: str                # a registry table or a named DLM frame (see quality_checks.dlm_rules.FRAMES)
    field: str | None
    severity: str             # critical (blocks publication) | warning
    threshold_pct: float      # fail when the violated percentage exceeds this
    expectation: str          # great_expectations.expectations class name
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)
    description: str = ""
