"""Stage: read a source, validate, keep only the cohort, de-identify, and upsert raw FHIR into staging.

Preconditions: the registry tables exist. Staging is keyed on the FHIR identity (type, id): a resource
whose canonical JSON hash is unchanged is skipped, a changed one replaces its row, a new one is inserted.
A snapshot source (files, a full pull) holds everything, so staged resources it no longer contains
(deleted at the source, or of a patient who left the cohort) are removed. An incremental source (a
`_lastUpdated` / `_since` pull) holds only changes: patients and the cohort are then what is staged
plus what arrives, and deletions come only from the source's own list (`source.deleted`).
Everything, including the source's new watermarks (`dlm_extract_state`), is written in one transaction.

Streaming, in bounded memory:
- The cohort (patients with a liver-metastasis Condition) is found in a first pass over Patients and
  Conditions. What routing them needs later (identity, hashes, the de-identified JSON: nothing staging
  would not hold) goes to an unnamed temporary file, read back once the cohort is known; memory keeps
  only patient ids. The second pass streams everything else.
- New and changed rows are written in batches of at most `BATCH_ROWS` rows / `BATCH_CHARS` characters of
  JSON (etl.stage.store: on PostgreSQL new rows are copied straight into staging, changed ones copied to
  a temporary table and upserted; executemany on SQLite); deletions and quarantine rows are batched too.
- What grows with the input is per resource identity, not per body, and it is kept on disk
  (etl.stage.index): the staged hash of every staged resource (read at the start, to skip unchanged ones)
  and whether, with which `lastUpdated`, it was seen in this run (duplicates, and snapshot deletions).
  Memory holds patient ids only. A snapshot reads every staged key first; an incremental source asks
  staging for the keys it brings, a block of at most `LOOKUP_BLOCK` resources / `LOOKUP_BLOCK_CHARS`
  characters at a time (up to `LAZY_LOOKUPS` keys, then it reads them all), so a small change costs
  little however large staging is. The validator remembers at most `etl.stage.validate.CACHE_ENTRIES` values.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Callable
from functools import partial

import sqlalchemy as sa

from etl.extract import RawRecord
from etl.progress import Progress
from etl.stage.accounting import Accounting
from etl.stage.deidentify import deidentified_text, patient_of
from etl.stage.index import StagingIndex
from etl.stage.parse import Rejected, parse_records
from etl.stage.prepare import Prepared, canonical_digest, last_updated, prepare
from etl.stage.pseudonym import Pseudonymizer
from etl.stage.store import StagingStore
from etl.vocabulary import CodeMap

__all__ = ["Accounting", "Pseudonymizer", "canonical_hash", "load_extract_state", "stage_source"]

COHORT_MEANING = "liver_metastasis"
FIRST_PASS = {"Patient", "Condition"}
BATCH_ROWS = 5000              # staging rows per write (also deletions and quarantine rows)
BATCH_CHARS = 32_000_000       # ... or fewer, when their JSON reaches this many characters
READ_CHUNK = 5000              # rows per fetch when reading staging
LOOKUP_BLOCK = 1000            # resources whose staged keys an incremental stage asks for together
LOOKUP_BLOCK_CHARS = 2_000_000  # ... or fewer, when their JSON reaches this many characters (a block is held parsed)
LAZY_LOOKUPS = 100_000         # an incremental stage asks staging for up to this many keys, then reads it all


def _storable(text: str) -> str:
    """Text a UTF-8 database takes: a lone surrogate (from a JSON escape such as \\ud800) written as that escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def canonical_hash(resource: dict) -> str:
    """Hash of the resource as received, independent of key order and white space."""
    return canonical_digest(resource).hex()


class _Stager:
    def __init__(self, conn: sa.Connection, tables, pseudo: Pseudonymizer, run_id: str, source: str,
                 supported_types: frozenset[str], show_progress: bool | None, index: StagingIndex, snapshot: bool):
        self.conn, self.pseudo, self.run_id, self.source = conn, pseudo, run_id, source
        self.supported_types = supported_types
        self.fetched_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        self.staging, self.quarantine_table = tables["fhir_resource"], tables["dlm_quarantine"]
        self.store = StagingStore.for_connection(conn, self.staging)
        self.acct = Accounting()
        self.index = index
        # A snapshot needs every staged key (its deletions are the keys it does not hold): read them all now.
        # An incremental source holds a few changes: ask staging for the keys it brings, a block at a time
        # (`prefetch`), unless there are many (then read them all, as for a snapshot); the cost then follows
        # the change, not staging.
        self.lazy_lookups = None if snapshot else 0
        self.asked: set[tuple[str, str]] = set()   # keys of the current block that staging was asked for
        if snapshot:
            self._read_staged_keys()
        # Rows to write, by key (a newer copy replaces), each with whether its key is absent from staging.
        self.pending: dict[tuple[str, str], tuple[dict, bool]] = {}
        self.pending_chars = 0
        self.quarantine_rows: list[dict] = []
        self.quarantined_patients: set[str] = set()  # pseudonyms of Patients that could not be loaded
        self.progress = Progress("staged resources", show_progress)

    def _read_staged_keys(self) -> None:
        s = self.staging
        self.index.load(self.conn.execute(sa.select(s.c.resource_type, s.c.resource_id, s.c.sha256)
                                          .order_by(s.c.resource_type, s.c.resource_id)   # in key order: fastest
                                          .execution_options(yield_per=READ_CHUNK)))
        self.lazy_lookups, self.asked = None, set()

    def prefetch(self, keys: list[tuple[str, str]], new_block: bool = True) -> None:
        """Incremental source: read the staged hashes of a block of keys into the index, one query per
        resource type and 500 keys, so that `_lookup` asks staging nothing more for them. Past
        `LAZY_LOOKUPS` keys, read every staged key instead. A snapshot has read them all already."""
        if self.lazy_lookups is None:
            return
        todo = [key for key in dict.fromkeys(keys) if new_block or key not in self.asked]
        self.lazy_lookups += len(todo)
        if self.lazy_lookups > LAZY_LOOKUPS:
            self._read_staged_keys()
            return
        by_type: dict[str, list[str]] = {}
        for resource_type, resource_id in todo:
            by_type.setdefault(resource_type, []).append(resource_id)
        s = self.staging
        for resource_type, ids in by_type.items():
            for start in range(0, len(ids), 500):
                found = self.conn.execute(sa.select(s.c.resource_id, s.c.sha256).where(
                    s.c.resource_type == resource_type, s.c.resource_id.in_(ids[start:start + 500]))).all()
                self.index.load((resource_type, resource_id, sha) for resource_id, sha in found)
        self.asked = set(todo) if new_block else self.asked | set(todo)

    def _lookup(self, key: tuple[str, str]) -> tuple[bytes | None, str | None]:
        """etl.stage.index.StagingIndex.lookup, asking staging for a key that neither the index nor the
        current block's `prefetch` has read."""
        digest, seen = self.index.lookup(key)
        if digest is None and self.lazy_lookups is not None and key not in self.asked:
            self.prefetch([key], new_block=False)
            digest, seen = self.index.lookup(key)
        return digest, seen

    def staging_key(self, resource_type: str, resource_id: str) -> tuple[str, str]:
        """(type, id) in staging of a FHIR type and id: a Patient's id is its pseudonym."""
        return resource_type, self.pseudo.patient(resource_id) if resource_type == "Patient" else resource_id

    def looked_up(self, items, key_of: Callable, chars_of: Callable):
        """`items` in order. For an incremental source they are taken a block at a time (`LOOKUP_BLOCK` items
        or `LOOKUP_BLOCK_CHARS` characters), and staging is asked for the block's keys (`key_of`: an item's
        key, or None) before its items are handed on; a snapshot's items pass one by one."""
        block, chars = [], 0
        for item in items:
            if self.lazy_lookups is None and not block:
                yield item
                continue
            block.append(item)
            chars += chars_of(item)
            if len(block) >= LOOKUP_BLOCK or chars >= LOOKUP_BLOCK_CHARS:
                yield from self._prefetched(block, key_of)
                block, chars = [], 0
        yield from self._prefetched(block, key_of)

    def _prefetched(self, block: list, key_of: Callable) -> list:
        self.prefetch([key for key in map(key_of, block) if key is not None])
        return block

    # -- quarantine ------------------------------------------------------------------------------------
    def quarantine(self, record: RawRecord, reason: str, resource_type: str | None) -> None:
        self._quarantine(record.location, reason, resource_type, _sha(record.text),
                         deidentified_text(record.text, self.pseudo))

    def _quarantine(self, location: str, reason: str, resource_type: str | None, sha: str,
                    raw_text: str | None) -> None:
        self.acct.quarantined[reason.split(":")[0]] += 1
        self.quarantine_rows.append({"run_id": self.run_id, "location": _storable(location[:500]),
                                     "resource_type": resource_type and _storable(resource_type[:64]),
                                     "reason": _storable(reason), "sha256": sha, "raw_text": raw_text})
        if len(self.quarantine_rows) >= BATCH_ROWS:
            self.flush()

    # -- routing ---------------------------------------------------------------------------------------
    def _verdict(self, resource_type: str, key: str | None, cohort: set[str], patients: set[str]) -> str | None:
        """Where a valid resource goes: None to staging, else `excluded:<reason>` or `quarantined:<reason>`."""
        if resource_type not in self.supported_types:
            return "excluded:resource type not used by the registry"
        if key is None:
            return "excluded:not linked to a patient"
        if key in self.quarantined_patients:
            return "quarantined:belongs to a quarantined Patient"
        if key not in patients:
            return "quarantined:reference to a patient not in the source"
        if key not in cohort:
            return "excluded:patient not in cohort"
        return None

    def route(self, record: RawRecord, resource: Prepared, patients: set[str], cohort: set[str]) -> None:
        """Stage, exclude or quarantine one valid resource by its type and the patient (pseudonym) it belongs to."""
        verdict = self._verdict(resource.resource_type, resource.owner, cohort, patients)
        if verdict is None:
            self._stage(resource)
        elif verdict.startswith("excluded:"):
            self.acct.excluded[verdict[9:]] += 1
        else:
            self.quarantine(record, verdict[12:], resource.resource_type)

    def route_spooled(self, item: list, patients: set[str], cohort: set[str]) -> None:
        """`route` for a first-pass resource read back from the spool (see `spool_item`)."""
        location, resource_type, resource_id, owner_key, last_updated, version_id, digest, raw_sha, clean = item
        verdict = self._verdict(resource_type, owner_key, cohort, patients)
        if verdict is None:
            self._stage(Prepared(resource_type, resource_id, owner_key, version_id, last_updated, bytes.fromhex(digest),
                                 clean))
        elif verdict.startswith("excluded:"):
            self.acct.excluded[verdict[9:]] += 1
        else:  # the quarantined text is de-identified like staging: the staged JSON, as deidentified_text writes it
            self._quarantine(location, verdict[12:], resource_type, raw_sha,
                             json.dumps(json.loads(clean), ensure_ascii=False))

    def spool_item(self, record: RawRecord, resource: Prepared) -> list:
        return [record.location, resource.resource_type, resource.staging_id, resource.owner, resource.last_updated,
                resource.version_id, resource.digest.hex(), _sha(record.text), resource.clean]

    # -- staging ---------------------------------------------------------------------------------------
    def _row(self, resource: Prepared) -> dict:
        return {"resource_type": resource.resource_type, "resource_id": resource.staging_id,
                "version_id": resource.version_id, "last_updated": resource.last_updated or None,
                "patient_key": resource.owner, "sha256": resource.digest.hex(), "source": self.source,
                "fetched_at": self.fetched_at, "resource_json": resource.clean}

    def _stage(self, resource: Prepared) -> None:
        key, last_updated, digest = (resource.resource_type, resource.staging_id), resource.last_updated, resource.digest
        previous, kept = self._lookup(key)
        duplicate = kept is not None
        if duplicate:
            # Same identity twice in one input: the later copy wins only if it says it is newer.
            self.acct.excluded["duplicate resource id"] += 1
            if last_updated <= kept:
                return
        else:
            self.acct.loaded += 1
            self.progress.step()
        if previous == digest:
            self.index.mark(key, digest, last_updated)
            self.acct.changes["unchanged"] += 1
            return
        self.index.mark(key, digest, last_updated)
        if not duplicate:
            self.acct.changes["new" if previous is None else "changed"] += 1
        row = self._row(resource)
        waiting = self.pending.get(key)
        # Absent from staging: not staged before this run and not yet written in it (a copy still waiting in
        # the batch is replaced, not written). Such rows are inserted; the others upserted.
        absent = waiting[1] if waiting else previous is None and not duplicate
        self.pending[key] = (row, absent)
        self.pending_chars += len(row["resource_json"])
        if len(self.pending) >= BATCH_ROWS or self.pending_chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.store.insert([row for row, absent in self.pending.values() if absent])
            self.store.upsert([row for row, absent in self.pending.values() if not absent])
            self.pending, self.pending_chars = {}, 0
        if self.quarantine_rows:
            self.conn.execute(self.quarantine_table.insert(), self.quarantine_rows)
            self.quarantine_rows = []

    # -- deletions -------------------------------------------------------------------------------------
    def remove_unseen(self) -> None:
        """The source is a full snapshot: staged resources it no longer has are deleted."""
        self.flush()
        for keys in self.index.unseen_batches(BATCH_ROWS):
            self._delete(keys)

    def remove_deleted(self, deleted: list[tuple[str, str]]) -> None:
        """Deletions the source reported (e.g. Bulk Data `deleted`), by FHIR type and id."""
        self.flush()
        asked = sorted({self.staging_key(t, i) for t, i in deleted})
        for start in range(0, len(asked), LOOKUP_BLOCK):
            self.prefetch(asked[start:start + LOOKUP_BLOCK])
            keys = [key for key in asked[start:start + LOOKUP_BLOCK] if self._is_unseen(key)]
            for first in range(0, len(keys), BATCH_ROWS):
                self._delete(keys[first:first + BATCH_ROWS])

    def _is_unseen(self, key: tuple[str, str]) -> bool:
        """Staged before and not seen in this run."""
        digest, seen = self._lookup(key)
        return digest is not None and seen is None

    def _delete(self, keys: list[tuple[str, str]]) -> None:
        """Delete one batch of staged keys (at most `BATCH_ROWS`)."""
        self.store.delete(keys)
        self.index.drop(keys)
        self.acct.changes["deleted"] += len(keys)

    def staged_cohort(self, codes: CodeMap) -> tuple[set[str], set[str]]:
        """Patients (pseudonyms) already staged, and those of them with a liver-metastasis Condition."""
        s = self.staging
        patients = {i for (i,) in self.conn.execute(sa.select(s.c.resource_id).where(s.c.resource_type == "Patient")
                                                    .execution_options(yield_per=READ_CHUNK))}
        cohort = set()
        conditions = sa.select(s.c.resource_json).where(s.c.resource_type == "Condition")
        for (text,) in self.conn.execute(conditions.execution_options(yield_per=READ_CHUNK)):
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
                 show_progress: bool | None = None, validation: str | None = None,
                 workers: int | None = None) -> Accounting:
    """Upsert the cohort's resources from `source` (any etl.extract source) into staging; returns the accounting.

    Resource types the registry does not map (`supported_types`) are excluded, not stored
    (minimum necessary). `validation`: `elements` (default) or `model` (etl.stage.validate; default from
    `DLMREG_FHIR_VALIDATION`); resources are validated by `workers` processes (etl.stage.parse.parse_records).
    """
    snapshot = getattr(source, "is_snapshot", True)
    with engine.begin() as conn, StagingIndex() as index, \
            tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogatepass") as spool:
        # A repeated stage of the same run (a retried task) must not list its quarantine twice.
        conn.execute(tables["dlm_quarantine"].delete().where(tables["dlm_quarantine"].c.run_id == run_id))
        stager = _Stager(conn, tables, pseudo, run_id, source.describe(), supported_types, show_progress, index,
                         snapshot)
        # Pass 1: Patients and Conditions, to find the cohort. Only ids stay in memory; the rest is spooled.
        winners: dict[str, tuple[int, str]] = {}   # Patient id -> (spool line of the copy kept, its lastUpdated)
        cohort_ids: set[str] = set()               # FHIR ids of patients with a liver-metastasis Condition
        spooled = 0
        for record, parsed in parse_records(source.records(types=FIRST_PASS), validation, workers):
            if isinstance(parsed, Rejected):
                stager.quarantine(record, parsed.reason, parsed.resource_type)
                continue
            if parsed["resourceType"] == "Patient" and not parsed.get("birthDate"):
                stager.quarantine(record, "Patient without birthDate: OMOP person needs year_of_birth", "Patient")
                stager.quarantined_patients.add(pseudo.patient(parsed["id"]))
                continue
            if parsed["resourceType"] == "Patient":
                if parsed["id"] in winners:
                    # Keep the newer copy of a Patient seen twice; the other is a counted duplicate.
                    stager.acct.excluded["duplicate resource id"] += 1
                    if last_updated(parsed) <= winners[parsed["id"]][1]:
                        continue
                winners[parsed["id"]] = (spooled, last_updated(parsed))
            elif codes.meaning(parsed.get("code")) == COHORT_MEANING and patient_of(parsed):
                cohort_ids.add(patient_of(parsed))
            spool.write(json.dumps(stager.spool_item(record, prepare(parsed, pseudo)), ensure_ascii=False) + "\n")
            spooled += 1
        known, cohort = (set(), set()) if snapshot else stager.staged_cohort(codes)
        known |= {pseudo.patient(pid) for pid in winners}
        cohort |= {pseudo.patient(pid) for pid in cohort_ids}
        cohort &= known
        kept = {line for line, _ in winners.values()}
        del winners, cohort_ids
        spool.seek(0)
        spooled_items = ((line, json.loads(text), len(text)) for line, text in enumerate(spool))
        for line, item, _ in stager.looked_up(spooled_items, lambda s: (s[1][1], s[1][2]), lambda s: s[2]):
            if item[1] == "Patient" and line not in kept:
                continue   # an older copy of a Patient, already counted as a duplicate
            stager.route_spooled(item, known, cohort)
        # Pass 2: everything else, streamed, de-identified and hashed where it is validated.
        parsed_records = parse_records(source.records(exclude=FIRST_PASS), validation, workers,
                                       prepare=partial(prepare, pseudo=pseudo))
        for record, parsed in stager.looked_up(
                parsed_records, lambda r: None if isinstance(r[1], Rejected) else (r[1].resource_type, r[1].staging_id),
                lambda r: len(r[0].text)):
            if isinstance(parsed, Rejected):
                stager.quarantine(record, parsed.reason, parsed.resource_type)
            else:
                stager.route(record, parsed, known, cohort)
        if snapshot:
            stager.remove_unseen()
        stager.remove_deleted(list(getattr(source, "deleted", [])))
        stager.flush()
        stager.store.close()
        if hasattr(source, "new_state") and not getattr(source, "incomplete", None):
            _save_extract_state(conn, tables["dlm_extract_state"], source.describe(), source.new_state())
        stager.progress.done()
    return stager.acct
