"""OBSERVATION_PERIOD: one span per person from the earliest to the latest dated record.

| rule | destination | logic |
|---|---|---|
| OP1 | observation_period_start_date / end_date | min / max over condition, procedure, drug, measurement, observation, note and death dates |
| OP2 | period_type_concept_id | Standard algorithm from EHR (32882) |
The end date is also the patient's last contact, where survival is censored.
"""
from __future__ import annotations

from etl.transform.context import MapContext

DATE_FIELDS = {
    "condition_occurrence": ("condition_start_date", "condition_end_date"),
    "procedure_occurrence": ("procedure_date", "procedure_end_date"),
    "drug_exposure": ("drug_exposure_start_date", "drug_exposure_end_date"),
    "measurement": ("measurement_date",),
    "observation": ("observation_date",),
    "note": ("note_date",),
    "death": ("death_date",),
}


def build(ctx: MapContext) -> None:
    spans: dict[int, list] = {}
    for table, fields in DATE_FIELDS.items():
        for row in ctx.rows.get(table, []):
            for field in fields:
                day = row.get(field)
                if day is not None:
                    span = spans.setdefault(row["person_id"], [day, day])
                    span[0], span[1] = min(span[0], day), max(span[1], day)
    patient_of = {person_id: patient for patient, person_id in ctx.persons.items()}
    for person_id, (start, end) in sorted(spans.items()):
        ctx.add("observation_period", {
            "observation_period_id": ctx.ids.id("observation_period", f"Patient/{patient_of[person_id]}#period"),
            "person_id": person_id, "observation_period_start_date": start, "observation_period_end_date": end,
            "period_type_concept_id": ctx.codes.convention("type_observation_period"),
        })
