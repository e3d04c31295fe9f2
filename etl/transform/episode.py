"""EPISODE and EPISODE_EVENT (OMOP oncology extension) from the DLM time line.

| rule | destination | source | logic |
|---|---|---|---|
| E1 | episode (Treatment Regimen 32531) | each chemotherapy Procedure | start/end = performed period; object concept 0 (regimen concepts not mapped) |
| E2 | episode_event | drug exposures starting within the regimen, and the procedure | field concepts drug_exposure_id / procedure_occurrence_id |
| E3 | episode (Disease Recurrence 32529) | each recurrence Condition | object concept = the condition's concept |
| E4 | episode_type_concept_id | none | EHR episode record (32828) |
"""
from __future__ import annotations

from etl.transform.context import MapContext


def _episode(ctx: MapContext, key: str, person_id: int, concept: str, start, end, object_concept_id: int,
             source: str) -> int:
    episode_id = ctx.ids.id("episode", key)
    ctx.add("episode", {
        "episode_id": episode_id, "person_id": person_id, "episode_concept_id": ctx.codes.convention(concept),
        "episode_start_date": start, "episode_end_date": end, "episode_object_concept_id": object_concept_id,
        "episode_type_concept_id": ctx.codes.convention("type_episode"), "episode_source_value": source,
    })
    return episode_id


def _link(ctx: MapContext, episode_id: int, event_id: int, field: str) -> None:
    ctx.add("episode_event", {"episode_id": episode_id, "event_id": event_id,
                              "episode_event_field_concept_id": ctx.codes.convention(field)})


def build(ctx: MapContext) -> None:
    drugs_by_person: dict[int, list[dict]] = {}
    for drug in ctx.rows.get("drug_exposure", []):
        drugs_by_person.setdefault(drug["person_id"], []).append(drug)
    conditions = {row["condition_occurrence_id"]: row for row in ctx.rows.get("condition_occurrence", [])}
    for event in ctx.rows.get("dlm_clinical_event", []):
        if event["event"] == "chemotherapy" and event["omop_table"] == "procedure_occurrence":
            end = event["end_date"] or event["start_date"]
            episode_id = _episode(ctx, ctx.event_keys[event["event_id"]] + "#regimen", event["person_id"],
                                  "episode_treatment_regimen",
                                  event["start_date"], end, 0, "chemotherapy")
            _link(ctx, episode_id, event["omop_id"], "field_procedure_occurrence_id")
            for drug in drugs_by_person.get(event["person_id"], []):
                if event["start_date"] <= drug["drug_exposure_start_date"] <= end:
                    _link(ctx, episode_id, drug["drug_exposure_id"], "field_drug_exposure_id")
        elif event["event"] == "recurrence":
            condition = conditions[event["omop_id"]]
            episode_id = _episode(ctx, ctx.event_keys[event["event_id"]] + "#recurrence", event["person_id"],
                                  "episode_disease_recurrence", event["start_date"], None,
                                  condition["condition_concept_id"], "recurrence")
            _link(ctx, episode_id, event["omop_id"], "field_condition_occurrence_id")
