"""Which patients a run maps: every registry row belongs to one patient, so the registry is kept per patient.

A patient's rows are a function of its staged resources and of the mapping itself (code, mapping CSVs,
settings). Its digest hashes both; `dlm_patient_digest` keeps the digest each patient was last mapped
from, so a run re-maps only patients whose digest changed and removes the rows of patients no longer
staged. Changing the mapping code, a mapping CSV, the follow-up window or whether report text is stored
changes every digest: the next run re-maps everyone.

| rule | what | logic |
|---|---|---|
| PD1 | patient digest | sha256 of the mapping salt, the patient's resource count and the sum (mod 2^256) of its resources' staged sha256 (order-free, read from the index on `fhir_resource(patient_key, sha256)`) |
| PD2 | mapping salt | sha256 of the source of etl.transform, etl.lesions, etl.nlp and etl.vocabulary, every file in mappings/, the loaded code map (site CSVs included), the follow-up window and the report-text setting (etl.transform.note.store_note_text) |
| PD3 | partition k of n | patients whose key is in [k/n, (k+1)/n) of the 32-bit space of the key's first 8 hex digits (keys are HMAC hex digests, so partitions are even); the first and last ranges are open, so any key has one partition |
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

import mappings
from etl import bulk
from etl.transform.note import store_note_text
from etl.vocabulary import CodeMap

_ETL = Path(__file__).resolve().parents[1]
SALT_SOURCES = ("transform", "lesions", "nlp", "vocabulary.py")
LOOKUP_CHUNK = 500


def mapping_salt(codes: CodeMap, window_months: float) -> str:
    """Hash of everything besides staging that a patient's rows depend on (rule PD2)."""
    digest = hashlib.sha256()
    files = []
    for name in SALT_SOURCES:
        path = _ETL / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    files += sorted(p for p in mappings.DIRECTORY.iterdir() if p.is_file() and p.suffix != ".pyc")
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    rows = sorted((m.system, m.code, m.display, m.meaning, m.domain, m.concept_id, m.vocabulary) for m in codes.mappings)
    digest.update(repr((rows, sorted(codes.conventions.items()), float(window_months), store_note_text())).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class KeyRange:
    """Patient keys lo <= key < hi (None: open end)."""

    lo: str | None = None
    hi: str | None = None

    @classmethod
    def partition(cls, part: int, parts: int) -> KeyRange:
        """Partition `part` (0-based) of `parts` (rule PD3)."""
        if not 0 <= part < parts:
            raise ValueError(f"partition {part} of {parts}: need 0 <= part < parts")
        bound = lambda k: format(k * 2**32 // parts, "08x")  # noqa: E731
        return cls(None if part == 0 else bound(part), None if part == parts - 1 else bound(part + 1))

    def where(self, column: sa.ColumnElement) -> list:
        return ([column >= self.lo] if self.lo is not None else []) + ([column < self.hi] if self.hi is not None else [])

    def __contains__(self, key: str) -> bool:
        return (self.lo is None or key >= self.lo) and (self.hi is None or key < self.hi)


def staged_digests(conn: sa.Connection, tables: dict[str, sa.Table], salt: str,
                   keys: KeyRange = KeyRange()) -> dict[str, str]:
    """patient key -> digest of its staged resources (rule PD1), for the patients in `keys`."""
    staging = tables["fhir_resource"]
    # One row per patient, its hashes joined by the database (a row per resource costs more to fetch than
    # to sum); the sum does not depend on their order.
    query = (sa.select(staging.c.patient_key, sa.func.count(), sa.func.aggregate_strings(staging.c.sha256, ","))
             .where(staging.c.patient_key.is_not(None), *keys.where(staging.c.patient_key))
             .group_by(staging.c.patient_key))
    digests = {}
    for key, count, hashes in conn.execute(query.execution_options(yield_per=2000)):
        total = sum(int(sha, 16) for sha in hashes.split(",")) % 2**256
        digests[key] = hashlib.sha256(f"{salt}:{count}:{total:064x}".encode()).hexdigest()
    return digests


@dataclass
class Stored:
    digest: str
    person_id: int | None


def stored_digests(conn: sa.Connection, tables: dict[str, sa.Table], keys: KeyRange = KeyRange()) -> dict[str, Stored]:
    table = tables["dlm_patient_digest"]
    query = sa.select(table.c.patient_key, table.c.digest, table.c.person_id).where(*keys.where(table.c.patient_key))
    return {key: Stored(digest, person_id) for key, digest, person_id in conn.execute(query)}


@dataclass
class MapNotes:
    """What mapping one patient reported: warnings and unmapped codes (summed over patients for the run)."""

    warnings: dict[str, int]
    unmapped: Counter

    def to_json(self) -> str | None:
        if not self.warnings and not self.unmapped:
            return None
        return json.dumps({"warnings": self.warnings, "unmapped": [[*k, n] for k, n in sorted(self.unmapped.items())]},
                          separators=(",", ":"), ensure_ascii=False)


def write_digests(conn: sa.Connection, tables: dict[str, sa.Table], rows: list[dict]) -> None:
    """Replace the digest rows of these patients (`patient_key`, `digest`, `person_id`, `run_id`, `map_notes`)."""
    table = tables["dlm_patient_digest"]
    delete_digests(conn, tables, [r["patient_key"] for r in rows])
    bulk.insert_rows(conn, table, rows)


def delete_digests(conn: sa.Connection, tables: dict[str, sa.Table], keys: list[str]) -> None:
    table = tables["dlm_patient_digest"]
    for start in range(0, len(keys), LOOKUP_CHUNK):
        conn.execute(table.delete().where(table.c.patient_key.in_(keys[start:start + LOOKUP_CHUNK])))


def registry_notes(conn: sa.Connection, tables: dict[str, sa.Table]) -> MapNotes:
    """Warnings and unmapped codes of every patient in the registry (as a full re-map would report them)."""
    table = tables["dlm_patient_digest"]
    warnings: Counter = Counter()
    unmapped: Counter = Counter()
    query = sa.select(table.c.map_notes).where(table.c.map_notes.is_not(None))
    for (text,) in conn.execute(query.execution_options(yield_per=5000)):
        notes = json.loads(text)
        warnings.update(notes["warnings"])
        for *key, count in notes["unmapped"]:
            unmapped[tuple(key)] += count
    return MapNotes(dict(warnings), unmapped)
