"""State shared by the transforms of one patient's mapping: ids, code map, and indexes between resources.

A MapContext holds one patient (references are followed within the patient only); the IdAssigner holds
the lineage of one batch of patients. OMOP ids are assigned once per FHIR identity and remembered in
`dlm_lineage`, so a re-run gives every row the id it had before (idempotent loads) and any OMOP row can
be traced back to its resource.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa

from etl.nlp.reader import ReportReader
from etl.vocabulary import CodeMap

LOOKUP_CHUNK = 500  # keys per IN (...) list


class IdAssigner:
    """Stable OMOP ids per (table, FHIR key), remembered in dlm_lineage with the FHIR versionId and the patient.

    Only the lineage of the patients being mapped is held (`load`, one batch at a time), so memory does not
    grow with the registry. `version` and `patient` describe the resource being mapped; the transforms need
    not pass them. A new id is the table's next free id; with `stride` n and `offset` k (partition k of n
    mapped concurrently in other transactions) new ids are k modulo n, so concurrent partitions never hand
    out the same id.
    """

    def __init__(self, conn: sa.Connection, lineage: sa.Table, offset: int = 0, stride: int = 1):
        if not 0 <= offset < stride:
            raise ValueError(f"partition {offset} of {stride}: need 0 <= offset < stride")
        self._conn, self._lineage = conn, lineage
        self._offset, self._stride = offset, stride
        self._ids: dict[tuple[str, str], int] = {}
        self._versions: dict[tuple[str, str], str | None] = {}
        self._next: dict[str, int] = {}
        self.version: str | None = None
        self.patient: str | None = None
        self.new: list[dict] = []
        self.version_changes: list[dict] = []

    def load(self, patient_keys: list[str]) -> None:
        """Forget the previous batch and read the lineage of these patients."""
        self._ids.clear()
        self._versions.clear()
        self.new, self.version_changes = [], []
        lineage = self._lineage
        for start in range(0, len(patient_keys), LOOKUP_CHUNK):
            query = (sa.select(lineage.c.omop_table, lineage.c.source_key, lineage.c.omop_id, lineage.c.fhir_version_id)
                     .where(lineage.c.patient_key.in_(patient_keys[start:start + LOOKUP_CHUNK])))
            for table, key, omop_id, version in self._conn.execute(query):
                self._ids[(table, key)] = omop_id
                self._versions[(table, key)] = version

    def _new_id(self, table: str) -> int:
        if table not in self._next:
            lineage = self._lineage
            top = self._conn.execute(sa.select(sa.func.max(lineage.c.omop_id))
                                     .where(lineage.c.omop_table == table)).scalar() or 0
            # the first id above every id in use that is `offset` modulo `stride`
            self._next[table] = top + 1 + (self._offset - top - 1) % self._stride
        omop_id = self._next[table]
        self._next[table] += self._stride
        return omop_id

    def id(self, table: str, source_key: str) -> int:
        key = (table, source_key)
        if key not in self._ids:
            self._ids[key] = self._new_id(table)
            self._versions[key] = self.version
            self.new.append({"omop_table": table, "source_key": source_key, "omop_id": self._ids[key],
                             "fhir_version_id": self.version, "patient_key": self.patient})
        elif self._versions[key] != self.version:
            self._versions[key] = self.version
            self.version_changes.append({"omop_table": table, "source_key": source_key,
                                         "fhir_version_id": self.version})
        return self._ids[key]


@dataclass
class ReportInfo:
    meaning: str | None
    date: dt.date | None
    person_id: int
    procedure_occurrence_id: int | None


@dataclass
class ProcedureInfo:
    meaning: str | None
    date: dt.date | None
    procedure_occurrence_id: int | None   # None when the code's domain routed it to another table


@dataclass
class MapContext:
    codes: CodeMap
    ids: IdAssigner
    rows: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    persons: dict[str, int] = field(default_factory=dict)          # patient pseudonym -> person_id
    lesions: dict[str, int] = field(default_factory=dict)          # BodyStructure id -> lesion_id
    reports: dict[str, ReportInfo] = field(default_factory=dict)   # DiagnosticReport id -> info
    report_of_observation: dict[str, str] = field(default_factory=dict)
    procedures: dict[str, ProcedureInfo] = field(default_factory=dict)
    mri_protocol: dict[str, dict[str, bool]] = field(default_factory=lambda: defaultdict(dict))
    sizes: dict[tuple[int, str], float | None] = field(default_factory=dict)  # (lesion_id, report) -> mm
    warnings: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    event_keys: dict[int, str] = field(default_factory=dict)       # dlm event id -> FHIR source key
    run_date: dt.date = field(default_factory=dt.date.today)       # NOTE_NLP.nlp_date
    text_notes: list = field(default_factory=list)                 # etl.lesions.text.TextNote per read note
    store_note_text: bool = False                                  # keep report text (etl.transform.note)
    reader: ReportReader = field(default_factory=lambda: ReportReader(0))  # report texts (etl.nlp.reader)

    def person_id(self, resource: dict) -> int | None:
        for key in ("subject", "patient"):
            ref = resource.get(key)
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                return self.persons.get(ref["reference"].split("/")[-1])
        return None

    def add(self, table: str, row: dict) -> dict:
        self.rows[table].append(row)
        return row

    def event(self, person_id: int, event: str, start: dt.date, end: dt.date | None, omop_table: str,
              omop_id: int, source_key: str) -> None:
        event_id = self.ids.id("dlm_clinical_event", source_key)
        self.event_keys[event_id] = source_key
        self.add("dlm_clinical_event", {
            "event_id": event_id, "person_id": person_id, "event": event,
            "start_date": start, "end_date": end, "omop_table": omop_table, "omop_id": omop_id})
