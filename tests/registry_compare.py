"""Compare two registries by content: every OMOP/DLM id is replaced by the FHIR identity it came from
(via dlm_lineage), so registries loaded in different orders, or with different histories, compare equal
exactly when they hold the same facts."""
from __future__ import annotations

import sqlalchemy as sa

from etl.load import REPLACED_TABLES
from etl.registry import open_registry

ID_TABLE = {
    "person_id": "person", "condition_occurrence_id": "condition_occurrence",
    "procedure_occurrence_id": "procedure_occurrence", "drug_exposure_id": "drug_exposure",
    "measurement_id": "measurement", "observation_id": "observation", "note_id": "note",
    "observation_period_id": "observation_period", "episode_id": "episode", "lesion_id": "dlm_lesion",
    "assessment_id": "dlm_lesion_assessment", "handling_id": "dlm_lesion_handling",
    "measurement_event_id": "procedure_occurrence", "observation_event_id": "procedure_occurrence",
    "note_nlp_id": "note_nlp", "comparison_id": "dlm_text_comparison",
}
FIELD_TABLE = {1147127: "condition_occurrence", 1147094: "drug_exposure", 1147082: "procedure_occurrence",
               1147138: "measurement"}
COMPARED = [t for t in REPLACED_TABLES if t != "cdm_source"] + ["dlm_lesion_outcome", "dlm_patient_course"]


def canonical_registry(url: str) -> dict[str, list[tuple]]:
    registry = open_registry(url)
    t = registry.tables
    with registry.engine.connect() as conn:
        key = {(table, omop_id): source for table, source, omop_id in
               conn.execute(sa.select(t["dlm_lineage"].c.omop_table, t["dlm_lineage"].c.source_key,
                                      t["dlm_lineage"].c.omop_id))}
        out = {}
        for name in COMPARED:
            rows = []
            for row in conn.execute(sa.select(t[name])).mappings():
                row = dict(row)
                for column, value in row.items():
                    if value is None:
                        continue
                    if column in ID_TABLE:
                        row[column] = key[(ID_TABLE[column], value)]
                    elif column == "event_id" and name == "dlm_clinical_event":
                        row[column] = key[("dlm_clinical_event", value)]
                    elif column == "event_id" and name == "episode_event":
                        row[column] = key[(FIELD_TABLE[row["episode_event_field_concept_id"]], value)]
                    elif column == "omop_id":
                        # DEATH has no id of its own: its rows are keyed by person.
                        row[column] = key[("person" if row["omop_table"] == "death" else row["omop_table"], value)]
                rows.append(tuple(sorted((k, repr(v)) for k, v in row.items())))
            out[name] = sorted(rows)
        staging = t["fhir_resource"]
        out["fhir_resource"] = sorted(conn.execute(sa.select(
            staging.c.resource_type, staging.c.resource_id, staging.c.sha256, staging.c.resource_json)).all())
    registry.engine.dispose()
    return out


def assert_same_registry(left: str, right: str, same_source: bool = True) -> None:
    """Equal registries. Across sources (files vs a server, which stamps meta.versionId/lastUpdated) the
    staged resources are compared by identity only; the registry tables must be equal in full."""
    a, b = canonical_registry(left), canonical_registry(right)
    if not same_source:
        for registry in (a, b):
            registry["fhir_resource"] = [row[:2] for row in registry["fhir_resource"]]
    for table in a:
        assert a[table] == b[table], f"{table} differs ({len(a[table])} vs {len(b[table])} rows)"
    assert a["person"], "registries must not be empty"
