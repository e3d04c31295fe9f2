"""Load mapped rows. A file source is a full snapshot, so each mapped table is replaced as a whole
inside the caller's transaction; ids come from the lineage table, so a re-run writes identical rows.
"""
from __future__ import annotations

import sqlalchemy as sa

BATCH = 5000
REPLACED_TABLES = (
    "person", "death", "condition_occurrence", "procedure_occurrence", "drug_exposure", "measurement",
    "observation", "note", "note_nlp", "observation_period", "episode", "episode_event", "source_to_concept_map",
    "concept", "cdm_source", "dlm_lesion", "dlm_lesion_assessment", "dlm_lesion_handling", "dlm_text_comparison", "dlm_clinical_event",
)


def load_rows(conn: sa.Connection, tables: dict[str, sa.Table], rows: dict[str, list[dict]],
              lineage: list[dict], version_changes: list[dict] = ()) -> dict[str, int]:
    """Replace REPLACED_TABLES with `rows`, add new lineage and record changed FHIR versions.

    Returns row counts per table.
    """
    unknown = set(rows) - set(REPLACED_TABLES)
    if unknown:
        raise ValueError(f"rows for tables that are not replaced by a load: {sorted(unknown)}")
    counts = {}
    for name in REPLACED_TABLES:
        table = tables[name]
        conn.execute(table.delete())
        batch = rows.get(name, [])
        for start in range(0, len(batch), BATCH):
            conn.execute(table.insert(), batch[start:start + BATCH])
        counts[name] = len(batch)
    lineage_table = tables["dlm_lineage"]
    for start in range(0, len(lineage), BATCH):
        conn.execute(lineage_table.insert(), lineage[start:start + BATCH])
    if version_changes:
        conn.execute(lineage_table.update()
                     .where(lineage_table.c.omop_table == sa.bindparam("t"),
                            lineage_table.c.source_key == sa.bindparam("k"))
                     .values(fhir_version_id=sa.bindparam("v")), list(version_changes))
    return counts
