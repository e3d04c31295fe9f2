"""Codings the generator may emit, taken from ``mappings/fhir_codes.csv`` by registry meaning.

Why: the synthetic data must speak exactly the vocabulary the extractor maps. Looking every coding up
in the mapping CSV (and failing on a miss) makes it impossible to emit an unmapped code by accident.
The only codings not taken from the CSV are the two structural ones named in ``resources.py``.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

CODES_CSV = Path(__file__).resolve().parents[2] / "mappings" / "fhir_codes.csv"


@cache
def _by_meaning() -> dict[str, tuple[dict, ...]]:
    table: dict[str, list[dict]] = {}
    with CODES_CSV.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            table.setdefault(row["registry_meaning"], []).append(
                {"system": row["source_system"], "code": row["source_code"], "display": row["source_display"]}
            )
    return {meaning: tuple(rows) for meaning, rows in table.items()}


def codes(meaning: str) -> tuple[str, ...]:
    """All source codes with this registry meaning, in CSV order."""
    return tuple(c["code"] for c in _by_meaning()[meaning])


@cache
def coding(meaning: str, code: str | None = None, display: str | None = None) -> dict:
    """The CSV coding with this meaning (and code or display, required when the meaning has several).

    The returned dict is shared between calls: callers must not mutate it.
    """
    rows = _by_meaning()[meaning]
    if code is None and display is None and len(rows) > 1:
        raise ValueError(f"meaning {meaning!r} has {len(rows)} codes; name one")
    for row in rows:
        if (code is None or row["code"] == code) and (display is None or row["display"] == display):
            return row
    raise KeyError(f"no code {code or display!r} with meaning {meaning!r} in {CODES_CSV.name}")


def concept(meaning: str, code: str | None = None, display: str | None = None, text: str | None = None) -> dict:
    """A CodeableConcept holding one CSV coding (and optional text)."""
    cc: dict = {"coding": [coding(meaning, code, display)]}
    if text:
        cc["text"] = text
    return cc
