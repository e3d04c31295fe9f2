"""Remove direct identifiers before anything is written, staging included.

Patient: only id (pseudonymised), gender, birth date and death are kept. Every reference to a patient
is rewritten to the pseudonym and loses its display (which often carries the name). Business
identifiers (accession numbers, MRNs) are dropped; a lesion's identifier is pseudonymised because
lesion identity must survive across studies.
"""
from __future__ import annotations

import datetime as dt
import json
import re

from etl.stage.pseudonym import Pseudonymizer

PATIENT_KEPT = ("resourceType", "id", "meta", "gender", "birthDate", "deceasedBoolean", "deceasedDateTime",
                "active")


def patient_reference_id(reference: object) -> str | None:
    """`Patient/123`, `https://host/fhir/Patient/123` or `Patient/123/_history/2` -> `123`."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    parts = text.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    return None


def patient_of(resource: dict) -> str | None:
    """The FHIR id of the patient a resource belongs to (None when not patient-linked)."""
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    for field in ("subject", "patient", "beneficiary"):
        found = patient_reference_id(resource.get(field))
        if found:
            return found
    return None


# FHIR date, dateTime and instant values: the element names that hold them (meta.lastUpdated is left alone:
# it is the server's bookkeeping, not the patient's history).
_DATE_KEYS = frozenset({"start", "end", "date", "issued", "birthDate", "recordedDate", "authoredOn", "recorded",
                        "lastOccurrence", "whenHandedOver", "whenPrepared", "dateAsserted", "created"})
_DATE_VALUE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(T.*)?$")


def _is_date_key(key: str) -> bool:
    return key in _DATE_KEYS or key.endswith(("DateTime", "Date", "Instant"))


def shift_date(value: str, days: int) -> str:
    """A FHIR date / dateTime / instant moved by `days`, at its own precision: a year or a month moves from
    its middle ("2020-03" shifted 10 days back stays "2020-03"); a dateTime keeps its time and zone.
    Anything else is returned as it is."""
    found = _DATE_VALUE.match(value)
    if not found:
        return value
    year, month, day, rest = found.groups()
    try:
        middle = dt.date(int(year), int(month or 7), int(day or (15 if month else 2)))
        moved = middle + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return value
    text = moved.isoformat()
    return text[:4] if month is None else text[:7] if day is None else text + (rest or "")


def _rewrite(node, pseudo: Pseudonymizer, days: int = 0):
    if isinstance(node, dict):
        return _rewrite_dict(node, pseudo, days)
    if isinstance(node, list):
        return [_rewrite(item, pseudo, days) for item in node]
    return node


def _rewrite_dict(node: dict, pseudo: Pseudonymizer, days: int = 0) -> dict:
    # Recurses only into containers (a call per leaf made this a fifth of the stage).
    patient_id = patient_reference_id(node) if "reference" in node else None
    out = {}
    for key, value in node.items():
        if key == "identifier" or (patient_id and key == "display"):
            continue
        if isinstance(value, dict):
            value = _rewrite_dict(value, pseudo, 0 if key == "meta" else days)
        elif isinstance(value, list):
            value = [_rewrite(item, pseudo, days) for item in value]
        elif days and isinstance(value, str) and _is_date_key(key):
            value = shift_date(value, days)
        out[key] = value
    if patient_id:
        out["reference"] = "Patient/" + pseudo.patient(patient_id)
    return out


def deidentify(resource: dict, pseudo: Pseudonymizer) -> dict:
    """A copy of `resource` safe to store (dates moved when the per-patient date shift is on)."""
    days = pseudo.date_shift(patient_of(resource))
    if resource["resourceType"] == "Patient":
        kept = {k: resource[k] for k in PATIENT_KEPT if k in resource}
        kept["id"] = pseudo.patient(resource["id"])
        return _rewrite_dict(kept, pseudo, days) if days else kept   # birthDate, deceasedDateTime
    clean = _rewrite(resource, pseudo, days)
    if resource["resourceType"] == "BodyStructure":
        owner = patient_of(resource) or ""
        clean["identifier"] = [
            {"value": pseudo.lesion(owner, ident.get("value", ""))}
            for ident in resource.get("identifier") or [] if isinstance(ident, dict) and ident.get("value")
        ]
    return clean


def deidentified_text(text: str, pseudo: Pseudonymizer) -> str | None:
    """Rejected input as it may be stored: a JSON object de-identified like staging, else None.

    Text that does not parse cannot be cleaned reliably, so only its hash is kept (by the caller).
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, an integer of over 4300 digits, nesting too deep
        return None
    if not isinstance(document, dict):
        return None
    if document.get("resourceType") == "Patient" or "name" in document or "telecom" in document:
        # In staging's key order, so a valid Patient's text equals its staged (de-identified) JSON.
        kept = {k: pseudo.patient(document[k]) if k == "id" else document[k] for k in PATIENT_KEPT
                if k in document and (k != "id" or isinstance(document[k], str))}
        return _json_text(kept)
    try:
        return _json_text(_rewrite(document, pseudo))
    except RecursionError:
        return None


def _json_text(document: dict) -> str:
    """JSON as readable text; escaped (ASCII) when it holds a lone surrogate (the escape \\ud800 decodes to
    one), which UTF-8 and so the database cannot store."""
    text = json.dumps(document, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(document)
    return text
