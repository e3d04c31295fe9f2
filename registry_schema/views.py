"""Analyst views: what a statistician queries instead of joining the lesion tables by hand.

`dlm_lesion_v`: one row per lesion with group, outcome, handling and dates.
`dlm_patient_survival_v`: one row per patient with surgical strategy and survival times (months).
Both are plain SQL views built from SQLAlchemy Core selects, so every dialect gets the same logic.
"""
from __future__ import annotations

import sqlalchemy as sa

from registry_schema.roles import grant_view_readers

VIEW_DESCRIPTIONS = {
    "dlm_lesion_v": "One row per lesion: patient, segment, baseline size, DLM group, outcome and its basis, "
                    "handling at surgery, CE-IOUS use, time zero, follow-up dates (to re-apply other windows), "
                    "pre-operative chemotherapy regimen.",
    "dlm_patient_survival_v": "One row per patient who had a hepatectomy: surgical strategy, time zero, "
                              "RFS and OS in months with event flags.",
}


def view_definitions(tables: dict[str, sa.Table]) -> dict[str, sa.Select]:
    lesion, outcome, course = tables["dlm_lesion"], tables["dlm_lesion_outcome"], tables["dlm_patient_course"]
    lesion_v = (
        sa.select(
            lesion.c.person_id, lesion.c.lesion_id, lesion.c.liver_segment, outcome.c.baseline_date,
            outcome.c.baseline_size_mm,
            outcome.c.dlm_group, outcome.c.outcome, outcome.c.outcome_basis, outcome.c.outcome_date,
            outcome.c.unevaluable_reason, outcome.c.handling, outcome.c.mri_protocol_met,
            outcome.c.followup_regrowth_date, outcome.c.last_followup_date,
            course.c.ce_ious, course.c.t0_date, course.c.strategy, course.c.chemo_regimen,
            course.c.chemo_targeted_agent,
        )
        .select_from(
            lesion.join(outcome, outcome.c.lesion_id == lesion.c.lesion_id)
            .outerjoin(course, course.c.person_id == lesion.c.person_id)
        )
    )
    survival_v = sa.select(
        course.c.person_id, course.c.strategy, course.c.t0_date, course.c.ce_ious, course.c.chemo_regimen,
        course.c.chemo_targeted_agent,
        course.c.rfs_months, course.c.rfs_event, course.c.os_months, course.c.os_event,
    ).where(course.c.t0_date.is_not(None))
    return {"dlm_lesion_v": lesion_v, "dlm_patient_survival_v": survival_v}


def _qualified(name: str, schema: str | None, conn: sa.Connection) -> str:
    quote = conn.dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def create_views(conn: sa.Connection, tables: dict[str, sa.Table], schema: str | None) -> None:
    """(Re)create the analyst views in `schema`."""
    for name, select in view_definitions(tables).items():
        qualified = _qualified(name, schema, conn)
        sql = select.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        conn.execute(sa.text(f"DROP VIEW IF EXISTS {qualified}"))
        conn.execute(sa.text(f"CREATE VIEW {qualified} AS {sql}"))
    grant_view_readers(conn, schema)  # a dropped view lost its grants
