"""Stage: read a source, validate, keep only the cohort, de-identify, and store raw FHIR in staging.

Preconditions: the registry tables exist. The cohort (patients with a liver-metastasis Condition) is
found in a first pass over Patients and Conditions; the second pass streams everything else.
A file source is a full snapshot, so staging is replaced as a whole, in one transaction.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import sqlalchemy as sa

from etl.extract import FileSource, RawRecord
from etl.progress import Progress
from etl.stage.accounting import Accounting
from etl.stage.deidentify import deidentify, patient_of
from etl.stage.parse import Rejected, parse_record
from etl.stage.pseudonym import Pseudonymizer
from etl.vocabulary import CodeMap

COHORT_MEANING = "liver_metastasis"
FIRST_PASS = {"Patient", "Condition"}
BATCH = 2000


@dataclass
class _Candidate:
    record: RawRecord
    resource: dict


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


class _Stager:
    def __init__(self, conn: sa.Connection, tables, pseudo: Pseudonymizer, run_id: str, source: str,
                 supported_types: frozenset[str], show_progress: bool | None):
        self.conn, self.pseudo, self.run_id, self.source = conn, pseudo, run_id, source
        self.supported_types = supported_types
        self.staging, self.quarantine_table = tables["fhir_resource"], tables["dlm_quarantine"]
        self.acct = Accounting()
        self.seen: dict[tuple[str, str], str] = {}
        self.batch: list[dict] = []
        self.progress = Progress("staged resources", show_progress)

    def quarantine(self, record: RawRecord, reason: str, resource_type: str | None) -> None:
        self.acct.quarantined[reason.split(":")[0]] += 1
        self.conn.execute(self.quarantine_table.insert(), {
            "run_id": self.run_id, "location": record.location[:500], "resource_type": resource_type,
            "reason": reason, "sha256": _sha(record.text)})

    def route(self, record: RawRecord, resource: dict, patients, cohort) -> None:
        """Stage, exclude or quarantine one valid resource by its type and the patient it belongs to."""
        owner = patient_of(resource)
        if resource["resourceType"] not in self.supported_types:
            self.acct.excluded["resource type not used by the registry"] += 1
        elif owner is None:
            self.acct.excluded["not linked to a patient"] += 1
        elif owner not in patients:
            self.quarantine(record, "reference to a patient not in the source", resource["resourceType"])
        elif owner not in cohort:
            self.acct.excluded["patient not in cohort"] += 1
        else:
            self.stage(record, resource)

    def stage(self, record: RawRecord, resource: dict) -> None:
        key = (resource["resourceType"], resource["id"])
        if key in self.seen:
            # Same identity twice in one snapshot: the later line wins only if it says it is newer.
            self.acct.excluded["duplicate resource id"] += 1
            if _last_updated(resource) > self.seen[key]:
                self._flush()
                self._write(record, resource, update=True)
            return
        self.seen[key] = _last_updated(resource)
        self.acct.loaded += 1
        self._write(record, resource)

    def _write(self, record: RawRecord, resource: dict, update: bool = False) -> None:
        clean = deidentify(resource, self.pseudo)
        owner = patient_of(resource)
        meta = resource.get("meta") or {}
        row = {
            "resource_type": resource["resourceType"], "resource_id": clean["id"],
            "version_id": meta.get("versionId"), "last_updated": meta.get("lastUpdated"),
            "patient_key": self.pseudo.patient(owner) if owner else None, "sha256": _sha(record.text),
            "source": self.source, "resource_json": json.dumps(clean, separators=(",", ":"), ensure_ascii=False),
        }
        if update:
            t = self.staging
            self.conn.execute(t.update().where(t.c.resource_type == row["resource_type"],
                                               t.c.resource_id == row["resource_id"]), row)
            return
        self.batch.append(row)
        self.progress.step()
        if len(self.batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.batch:
            self.conn.execute(self.staging.insert(), self.batch)
            self.batch = []


def _last_updated(resource: dict) -> str:
    return str((resource.get("meta") or {}).get("lastUpdated") or "")


def stage_source(engine: sa.Engine, tables: dict[str, sa.Table], source: FileSource, codes: CodeMap,
                 pseudo: Pseudonymizer, run_id: str, supported_types: frozenset[str],
                 show_progress: bool | None = None) -> Accounting:
    """Replace staging with the cohort's resources from `source`; returns the accounting.

    Resource types the registry does not map (`supported_types`) are excluded, not stored
    (minimum necessary).
    """
    with engine.begin() as conn:
        conn.execute(tables["fhir_resource"].delete())
        # A repeated stage of the same run (a retried task) must not list its quarantine twice.
        conn.execute(tables["dlm_quarantine"].delete().where(tables["dlm_quarantine"].c.run_id == run_id))
        stager = _Stager(conn, tables, pseudo, run_id, source.describe(), supported_types, show_progress)
        patients: dict[str, _Candidate] = {}
        conditions: list[_Candidate] = []
        for record in source.records(types=FIRST_PASS):
            parsed = parse_record(record)
            if isinstance(parsed, Rejected):
                stager.quarantine(record, parsed.reason, parsed.resource_type)
            elif parsed["resourceType"] == "Patient" and not parsed.get("birthDate"):
                stager.quarantine(record, "Patient without birthDate: OMOP person needs year_of_birth", "Patient")
            elif parsed["resourceType"] == "Patient":
                if parsed["id"] in patients:
                    # Keep the newer copy of a Patient seen twice; the other is a counted duplicate.
                    stager.acct.excluded["duplicate resource id"] += 1
                    if _last_updated(parsed) <= _last_updated(patients[parsed["id"]].resource):
                        continue
                patients[parsed["id"]] = _Candidate(record, parsed)
            else:
                conditions.append(_Candidate(record, parsed))
        cohort = {patient_of(c.resource) for c in conditions
                  if codes.meaning(c.resource.get("code")) == COHORT_MEANING} & patients.keys()
        for candidate in [*patients.values(), *conditions]:
            stager.route(candidate.record, candidate.resource, patients, cohort)
        for record in source.records(exclude=FIRST_PASS):
            parsed = parse_record(record)
            if isinstance(parsed, Rejected):
                stager.quarantine(record, parsed.reason, parsed.resource_type)
            else:
                stager.route(record, parsed, patients, cohort)
        stager._flush()
        stager.progress.done()
    return stager.acct
