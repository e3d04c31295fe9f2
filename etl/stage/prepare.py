"""What staging keeps of one valid resource: its keys, staged hash and de-identified JSON.

Computed where the resource was validated (etl.stage.parse: in a worker process when there are any), so
the run's own process only routes and writes; de-identifying and hashing were half of its staging time.
Only de-identified values leave this module: the owner is the patient's pseudonym, the JSON is the one
staging stores.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from etl.stage.deidentify import deidentify, patient_of
from etl.stage.pseudonym import Pseudonymizer

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class Prepared:
    resource_type: str
    staging_id: str          # the id in staging: a Patient's is its pseudonym
    owner: str | None        # pseudonym of the patient it belongs to (None when not patient-linked)
    version_id: str | None   # meta.versionId
    last_updated: str        # meta.lastUpdated, "" when absent
    digest: bytes            # staged hash (staged_digest)
    clean: str               # the de-identified JSON staging stores


def canonical_digest(resource: dict) -> bytes:
    """sha256 of the resource as received, independent of key order and white space."""
    return hashlib.sha256(_CANONICAL(resource).encode("utf-8", "replace")).digest()


def staged_digest(resource: dict, date_shift_days: int) -> bytes:
    """The staged hash: of the resource as received, and of the date shift when it is on (turning it on or
    off, or changing it, restages every resource and so re-maps every patient)."""
    if not date_shift_days:
        return canonical_digest(resource)
    return hashlib.sha256(canonical_digest(resource) + b"|date-shift:%d" % date_shift_days).digest()


def last_updated(resource: dict) -> str:
    return str((resource.get("meta") or {}).get("lastUpdated") or "")


def prepare(resource: dict, pseudo: Pseudonymizer) -> Prepared:
    """`resource` (parsed and valid) as staging keeps it."""
    owner = patient_of(resource)
    clean = deidentify(resource, pseudo)
    return Prepared(resource["resourceType"], clean["id"], pseudo.patient(owner) if owner else None,
                    (resource.get("meta") or {}).get("versionId"), last_updated(resource),
                    staged_digest(resource, pseudo.date_shift_days), COMPACT(clean))
