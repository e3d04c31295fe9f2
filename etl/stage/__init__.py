"""Stage: read a source, validate, keep only the cohort, de-identify, and upsert raw FHIR into staging.

Preconditions: the registry tables exist. Staging is keyed on the FHIR identity (type, id): a resource
whose canonical JSON hash is unchanged is skipped, a changed one replaces its row, a new one is inserted.
A snapshot source (files, a full pull) holds everything, so staged resources it no longer contains
(deleted at the source, or of a patient who left the cohort) are removed. An incremental source (a
`_lastUpdated` / `_since` pull) holds only changes: patients and the cohort are then what is staged
plus what arrives, and deletions come only from the source's own list (`source.deleted`).
The cohort (patients with a liver-metastasis Condition) is found in a first pass over Patients and
Conditions; the second pass streams everything else. Everything, including the source's new
watermarks (`dlm_extract_state`), is written in one transaction.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import sqlalchemy as sa

from etl.extract import RawRecord
from etl.progress import Progress
from etl.stage.accounting import Accounting
from etl.stage.deidentify import deidentified_text, deidentify, patient_of
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


def canonical_hash(resource: dict) -> str:
    """Hash of the resource as received, independent of key order and white space."""
    return _sha(json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def _last_updated(resource: dict) -> str:
    return str((resource.get("meta") or {}).get("lastUpdated") or "")


class _Stager:
    def __init__(self, conn: sa.Connection, tables, pseudo: Pseudonymizer, run_id: str, source: str,
                 supported_types: frozenset[str], show_progress: bool | None):
        self.conn, self.pseudo, self.run_id, self.source = conn, pseudo, run_id, source
        self.supported_types = supported_types
        self.fetched_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        self.staging, self.quarantine_table = tables["fhir_resource"], tables["dlm_quarantine"]
        self.acct = Accounting()
        s = self.staging
        self.existing: dict[tuple[str, str], str] = {
            (t, i): h for t, i, h in conn.execute(sa.select(s.c.resource_type, s.c.resource_id, s.c.sha256))}
        self.seen: dict[tuple[str, str], str] = {}   # staging key -> lastUpdated of the copy kept
        self.inserts: list[dict] = []
        self.quarantined_patients: set[str] = set()  # pseudonyms of Patients that could not be loaded
        self.progress = Progress("staged resources", show_progress)

    def quarantine(self, record: RawRecord, reason: str, resource_type: str | None) -> None:
        self.acct.quarantined[reason.split(":")[0]] += 1
        self.conn.execute(self.quarantine_table.insert(), {
            "run_id": self.run_id, "location": record.location[:500], "resource_type": resource_type,
            "reason": reason, "sha256": _sha(record.text), "raw_text": deidentified_text(record.text, self.pseudo)})

    def route(self, record: RawRecord, resource: dict, patients: set[str], cohort: set[str]) -> None:
        """Stage, exclude or quarantine one valid resource by its type and the patient (pseudonym) it belongs to."""
        owner = patient_of(resource)
        key = self.pseudo.patient(owner) if owner else None
        if resource["resourceType"] not in self.supported_types:
            self.acct.excluded["resource type not used by the registry"] += 1
        elif key is None:
            self.acct.excluded["not linked to a patient"] += 1
        elif key in self.quarantined_patients:
            self.quarantine(record, "belongs to a quarantined Patient", resource["resourceType"])
        elif key not in patients:
            self.quarantine(record, "reference to a patient not in the source", resource["resourceType"])
        elif key not in cohort:
            self.acct.excluded["patient not in cohort"] += 1
        else:
            self.stage(resource)

    def stage(self, resource: dict) -> None:
        clean = deidentify(resource, self.pseudo)
        key = (resource["resourceType"], clean["id"])
        duplicate = key in self.seen
        if duplicate:
            # Same identity twice in one input: the later copy wins only if it says it is newer.
            self.acct.excluded["duplicate resource id"] += 1
            if _last_updated(resource) <= self.seen[key]:
                return
        else:
            self.acct.loaded += 1
            self.progress.step()
        self.seen[key] = _last_updated(resource)
        digest = canonical_hash(resource)
        previous = self.existing.get(key)
        if previous == digest:
            self.acct.changes["unchanged"] += 1
            return
        owner = patient_of(resource)
        meta = resource.get("meta") or {}
        row = {
            "resource_type": key[0], "resource_id": key[1], "version_id": meta.get("versionId"),
            "last_updated": meta.get("lastUpdated"), "patient_key": self.pseudo.patient(owner) if owner else None,
            "sha256": digest, "source": self.source, "fetched_at": self.fetched_at,
            "resource_json": json.dumps(clean, separators=(",", ":"), ensure_ascii=False),
        }
        self.existing[key] = digest
        if previous is None and not duplicate:
            self.acct.changes["new"] += 1
            self.inserts.append(row)
            if len(self.inserts) >= BATCH:
                self.flush()
            return
        self.flush()  # the row to update may still be waiting in the insert batch
        if not duplicate:
            self.acct.changes["changed"] += 1
        s = self.staging
        self.conn.execute(s.update().where(s.c.resource_type == key[0], s.c.resource_id == key[1]), row)

    def flush(self) -> None:
        if self.inserts:
            self.conn.execute(self.staging.insert(), self.inserts)
            self.inserts = []

    def remove_unseen(self) -> None:
        """The source is a full snapshot: staged resources it no longer has are deleted."""
        self.flush()
        self._delete([key for key in self.existing if key not in self.seen])

    def remove_deleted(self, deleted: list[tuple[str, str]]) -> None:
        """Deletions the source reported (e.g. Bulk Data `deleted`), by FHIR type and id."""
        self.flush()
        keys = [(t, self.pseudo.patient(i) if t == "Patient" else i) for t, i in deleted]
        self._delete([key for key in keys if key in self.existing and key not in self.seen])

    def _delete(self, keys: list[tuple[str, str]]) -> None:
        s = self.staging
        for resource_type, resource_id in keys:
            self.conn.execute(s.delete().where(s.c.resource_type == resource_type, s.c.resource_id == resource_id))
            self.existing.pop((resource_type, resource_id), None)
        self.acct.changes["deleted"] += len(keys)

    def staged_cohort(self, codes: CodeMap) -> tuple[set[str], set[str]]:
        """Patients (pseudonyms) already staged, and those of them with a liver-metastasis Condition."""
        s = self.staging
        patients = {i for (i,) in self.conn.execute(sa.select(s.c.resource_id).where(s.c.resource_type == "Patient"))}
        cohort = set()
        for (text,) in self.conn.execute(sa.select(s.c.resource_json).where(s.c.resource_type == "Condition")):
            condition = json.loads(text)
            if codes.meaning(condition.get("code")) == COHORT_MEANING:
                cohort.add(patient_of(condition))
        return patients, cohort


def load_extract_state(engine: sa.Engine, tables: dict[str, sa.Table], source_key: str) -> dict[str, str]:
    """The watermarks a source left after its last successful stage (e.g. per-type `_lastUpdated`)."""
    t = tables["dlm_extract_state"]
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t.c.name, t.c.value).where(t.c.source_key == source_key)).all())


def _save_extract_state(conn: sa.Connection, table: sa.Table, source_key: str, state: dict[str, str]) -> None:
    for name, value in state.items():
        conn.execute(table.delete().where(table.c.source_key == source_key, table.c.name == name))
        conn.execute(table.insert(), {"source_key": source_key, "name": name, "value": value})


def stage_source(engine: sa.Engine, tables: dict[str, sa.Table], source, codes: CodeMap,
                 pseudo: Pseudonymizer, run_id: str, supported_types: frozenset[str],
                 show_progress: bool | None = None) -> Accounting:
    """Upsert the cohort's resources from `source` (any etl.extract source) into staging; returns the accounting.

    Resource types the registry does not map (`supported_types`) are excluded, not stored
    (minimum necessary).
    """
    snapshot = getattr(source, "is_snapshot", True)
    with engine.begin() as conn:
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
                stager.quarantined_patients.add(pseudo.patient(parsed["id"]))
            elif parsed["resourceType"] == "Patient":
                if parsed["id"] in patients:
                    # Keep the newer copy of a Patient seen twice; the other is a counted duplicate.
                    stager.acct.excluded["duplicate resource id"] += 1
                    if _last_updated(parsed) <= _last_updated(patients[parsed["id"]].resource):
                        continue
                patients[parsed["id"]] = _Candidate(record, parsed)
            else:
                conditions.append(_Candidate(record, parsed))
        known, cohort = (set(), set()) if snapshot else stager.staged_cohort(codes)
        known |= {pseudo.patient(pid) for pid in patients}
        cohort |= {pseudo.patient(patient_of(c.resource)) for c in conditions
                   if codes.meaning(c.resource.get("code")) == COHORT_MEANING and patient_of(c.resource)}
        cohort &= known
        for candidate in [*patients.values(), *conditions]:
            stager.route(candidate.record, candidate.resource, known, cohort)
        for record in source.records(exclude=FIRST_PASS):
            parsed = parse_record(record)
            if isinstance(parsed, Rejected):
                stager.quarantine(record, parsed.reason, parsed.resource_type)
            else:
                stager.route(record, parsed, known, cohort)
        if snapshot:
            stager.remove_unseen()
        stager.remove_deleted(list(getattr(source, "deleted", [])))
        stager.flush()
        if hasattr(source, "new_state") and not getattr(source, "incomplete", None):
            _save_extract_state(conn, tables["dlm_extract_state"], source.describe(), source.new_state())
        stager.progress.done()
    return stager.acct
