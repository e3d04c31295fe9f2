"""Generate checks from the OHDSI DQD v5.4 field-level definitions and thresholds (not hand-written).

Covered DQD check types: isRequired, isPrimaryKey (critical: a registry that violates them is not an
OMOP CDM), plausibleValueLow / plausibleValueHigh and plausibleStartBeforeEnd (warnings, as in DQD).
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from functools import lru_cache
from pathlib import Path

from quality_checks.checks import Check

DQD_FIELDS = Path(__file__).parent / "spec" / "OMOP_CDMv5.4_Field_Level.csv"


@lru_cache(maxsize=1)
def _rows() -> tuple[dict, ...]:
    with DQD_FIELDS.open(newline="", encoding="utf-8") as handle:
        return tuple(csv.DictReader(handle))


def _threshold(value: str) -> float:
    return float(value) if value not in ("", "NA") else 0.0


def _bound(expression: str, datatype: str, today: dt.date):
    """A DQD plausible-value bound as a Python value (literal dates, numbers, GETDATE() forms)."""
    text = expression.strip()
    if text in ("", "NA"):
        return None
    if text == "DATEADD(dd,1,GETDATE())":
        day = today + dt.timedelta(days=1)
        return dt.datetime.combine(day, dt.time()) if datatype == "datetime" else day
    if text == "YEAR(GETDATE())+1":
        return today.year + 1
    literal = re.fullmatch(r"'(\d{4})(\d{2})(\d{2})'", text)
    if literal:
        day = dt.date(*map(int, literal.groups()))
        return dt.datetime.combine(day, dt.time()) if datatype == "datetime" else day
    return float(text)


def dqd_checks(tables: set[str], today: dt.date) -> list[Check]:
    """Checks for the given tables (lower-case names) from the DQD field-level file."""
    checks = []
    for row in _rows():
        table, column, datatype = row["cdmTableName"].lower(), row["cdmFieldName"].lower(), row["cdmDatatype"]
        if table not in tables:
            continue
        base = f"{table}.{column}"
        if row["isRequired"] == "Yes":
            checks.append(Check(f"isRequired:{base}", "isRequired", table, column, "critical",
                                _threshold(row["isRequiredThreshold"]), "ExpectColumnValuesToNotBeNull",
                                description=f"{base} is never NULL"))
        if row["isPrimaryKey"] == "Yes":
            checks.append(Check(f"isPrimaryKey:{base}", "isPrimaryKey", table, column, "critical",
                                _threshold(row["isPrimaryKeyThreshold"]), "ExpectColumnValuesToBeUnique",
                                description=f"{base} is unique"))
        low = _bound(row["plausibleValueLow"], datatype, today)
        if low is not None:
            checks.append(Check(f"plausibleValueLow:{base}", "plausibleValueLow", table, column, "warning",
                                _threshold(row["plausibleValueLowThreshold"]), "ExpectColumnValuesToBeBetween",
                                {"min_value": low}, f"{base} >= {low}"))
        high = _bound(row["plausibleValueHigh"], datatype, today)
        if high is not None:
            checks.append(Check(f"plausibleValueHigh:{base}", "plausibleValueHigh", table, column, "warning",
                                _threshold(row["plausibleValueHighThreshold"]), "ExpectColumnValuesToBeBetween",
                                {"max_value": high}, f"{base} <= {high}"))
        end = row["plausibleStartBeforeEndFieldName"].strip().lower()
        if end not in ("", "na"):
            checks.append(Check(f"plausibleStartBeforeEnd:{base}", "plausibleStartBeforeEnd", table, column,
                                "warning", _threshold(row["plausibleStartBeforeEndThreshold"]),
                                "ExpectColumnPairValuesAToBeGreaterThanB",
                                {"column_A": end, "column_B": column, "or_equal": True,
                                 "ignore_row_if": "either_value_is_missing"},
                                f"{base} on or before {end}"))
    return checks
