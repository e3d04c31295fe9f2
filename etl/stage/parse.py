"""Turn one raw record into a validated resource dict, or a reason it cannot be loaded.

Validation uses the fhir.resources R4B models (they parse R4 JSON for the resources the registry uses),
element by element with remembered values (etl.stage.validate: same verdicts, a fraction of the cost);
the dict is kept for mapping because the models add nothing the transforms need.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from etl.extract import RawRecord
from etl.stage.validate import ElementValidator, ModelValidator, UnknownType


@dataclass(frozen=True)
class Rejected:
    reason: str
    resource_type: str | None = None


_DEFAULT = ElementValidator()


def parse_record(record: RawRecord, validator: ElementValidator | ModelValidator | None = None) -> dict | Rejected:
    """Parse and validate; the returned dict is the resource as received.

    `validator`: an etl.stage.validate validator (one per stage, so its remembered values are that run's).
    """
    if record.expected_type and record.expected_type.startswith("!"):
        return Rejected(record.expected_type[1:])
    try:
        resource = json.loads(record.text)
    except json.JSONDecodeError as exc:
        return Rejected(f"not valid JSON: {exc.msg} at char {exc.pos}")
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting too deep
        return Rejected("not valid JSON: " + ("nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]))
    if not isinstance(resource, dict):
        return Rejected("not a JSON object")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return Rejected("missing resourceType")
    if record.expected_type and resource_type != record.expected_type:
        return Rejected(f"resourceType {resource_type[:64]} in a file of {record.expected_type}", resource_type)
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        return Rejected("missing id", resource_type)
    try:
        problem = (validator or _DEFAULT).check(resource)
    except UnknownType:
        return Rejected(f"unknown resourceType {resource_type[:64]}", resource_type[:64])
    if problem is not None:
        return Rejected(f"invalid {resource_type}: {problem}", resource_type)
    return resource
