"""Small readers for FHIR datatypes: dates, periods and observation values."""
from __future__ import annotations

import datetime as dt

from etl.vocabulary import CodeMap


def to_date(value: object) -> dt.date | None:
    """FHIR date/dateTime (`2020`, `2020-03`, `2020-03-04`, `2020-03-04T10:00:00+01:00`) -> date.

    Partial dates take the first day of the period, as OMOP conventions do for month-only dates.
    """
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        parts = value[:10].split("-")
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2]) if len(parts) > 2 else 1
        return dt.date(year, month, day)
    except (ValueError, IndexError):
        return None


def to_datetime(value: object) -> dt.datetime | None:
    """dateTime -> naive datetime in the time zone the source wrote (OMOP stores local times)."""
    if not isinstance(value, str) or len(value) <= 10:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def effective_dates(resource: dict, *fields: str) -> tuple[dt.date | None, dt.date | None]:
    """(start, end) from the first present of `fields`, each a dateTime or a Period."""
    for field in fields:
        value = resource.get(field)
        if isinstance(value, dict):
            start, end = to_date(value.get("start")), to_date(value.get("end"))
            if start or end:
                return start or end, end or start
        elif value is not None:
            day = to_date(value)
            if day:
                return day, day
    return None, None


def first_reference_id(references: object, resource_type: str) -> str | None:
    """The id of the first reference to `resource_type` in a Reference or list of References."""
    items = references if isinstance(references, list) else [references]
    for item in items:
        text = item.get("reference") if isinstance(item, dict) else None
        if isinstance(text, str):
            parts = text.split("/")
            if len(parts) >= 2 and parts[-2] == resource_type:
                return parts[-1]
    return None


def reference_ids(references: object, resource_type: str) -> list[str]:
    items = references if isinstance(references, list) else []
    return [i for i in (first_reference_id(item, resource_type) for item in items) if i]


TRUE_STRINGS = {"true", "yes", "y", "present", "positive", "1"}
FALSE_STRINGS = {"false", "no", "n", "absent", "negative", "0"}


def observation_value(obs: dict, codes: CodeMap) -> dict:
    """The value of an Observation as {boolean, meaning, number, unit, text}.

    Booleans arrive as valueBoolean, as a coded value whose meaning is value_true/value_false, or
    as a yes/no string; the coded meaning (e.g. handling_resected) is kept for coded values.
    """
    out = {"boolean": None, "meaning": None, "number": None, "unit": None, "text": None}
    if isinstance(obs.get("valueBoolean"), bool):
        out["boolean"] = obs["valueBoolean"]
        out["text"] = str(obs["valueBoolean"]).lower()
    elif isinstance(obs.get("valueCodeableConcept"), dict):
        concept = obs["valueCodeableConcept"]
        mapping, source = codes.lookup(concept, "Observation.valueCodeableConcept")
        out["text"] = source
        if mapping:
            out["meaning"] = mapping.meaning
            out["boolean"] = {"value_true": True, "value_false": False}.get(mapping.meaning)
    elif isinstance(obs.get("valueQuantity"), dict):
        quantity = obs["valueQuantity"]
        out["number"] = quantity.get("value")
        out["unit"] = quantity.get("code") or quantity.get("unit")
        out["text"] = f"{quantity.get('value')} {out['unit'] or ''}".strip()
    elif isinstance(obs.get("valueString"), str):
        text = obs["valueString"].strip()
        out["text"] = text
        lowered = text.lower()
        out["boolean"] = True if lowered in TRUE_STRINGS else False if lowered in FALSE_STRINGS else None
    return out
