"""Per-lesion facts from Observations that point at a lesion (`focus` -> BodyStructure).

| rule | destination | observation meaning | logic |
|---|---|---|---|
| F1 | dlm_lesion_assessment (ct/mri) | lesion_visible | modality from the report's code; date = report date; visible/not_visible |
| F2 | dlm_lesion_assessment.size_mm | lesion_size | joined to F1 of the same lesion and report; cm converted to mm |
| F3 | dlm_lesion_assessment (ious/ce_ious) | found_on_ious | modality from the `partOf` procedure's code |
| F4 | dlm_lesion_assessment (pathology) | viable_tumor | viable_tumor / no_viable_tumor |
| F5 | dlm_lesion_handling | lesion_handling | resected / ablated / left_in_place, at the `partOf` hepatectomy |
| F6 | mri_protocol_met | mri_dwi and mri_hepatobiliary_phase in the MRI report | true only when both are true |
"""
from __future__ import annotations

from etl.nlp.technique import protocol_met
from etl.transform.context import MapContext
from etl.transform.fhirdata import first_reference_id

MODALITY = {"imaging_ct": "ct", "imaging_mri": "mri", "ious": "ious", "ce_ious": "ce_ious",
            "pathology_report": "pathology"}
HANDLING = {"handling_resected": "resected", "handling_ablated": "ablated", "handling_left_in_place": "left_in_place"}
BOOLEAN_FINDINGS = {
    "lesion_visible": ("visible", "not_visible"),
    "found_on_ious": ("found_on_ious", "not_found_on_ious"),
    "viable_tumor": ("viable_tumor", "no_viable_tumor"),
}
LESION_FACTS = {*BOOLEAN_FINDINGS, "lesion_size", "lesion_handling"}
MM_PER_UNIT = {"mm": 1.0, "cm": 10.0}


def record_protocol(meaning: str | None, report_id: str | None, value: dict, ctx: MapContext) -> None:
    """Remember MRI protocol flags of a report (rule F6); applied to its assessments in `finalize`."""
    if meaning in ("mri_dwi", "mri_hepatobiliary_phase") and report_id and value["boolean"] is not None:
        ctx.mri_protocol[report_id][meaning] = value["boolean"]


def record_fact(obs: dict, meaning: str, value: dict, report_id: str | None, when, ctx: MapContext) -> None:
    """Add the lesion fact of one Observation (rules F1-F5); unusable facts are counted as warnings."""
    lesion_id = ctx.lesions.get(first_reference_id(obs.get("focus"), "BodyStructure") or "")
    person_id = ctx.person_id(obs)
    if lesion_id is None or person_id is None or when is None:
        ctx.warnings[f"{meaning} observation without a known lesion or date"] += 1
        return
    key = "Observation/" + obs["id"]
    procedure = ctx.procedures.get(first_reference_id(obs.get("partOf"), "Procedure") or "")
    report = ctx.reports.get(report_id or "")
    if meaning == "lesion_handling":
        handling = HANDLING.get(value["meaning"])
        if handling is None:
            ctx.warnings["lesion_handling with an unmapped value"] += 1
            return
        ctx.add("dlm_lesion_handling", {
            "handling_id": ctx.ids.id("dlm_lesion_handling", key), "lesion_id": lesion_id, "person_id": person_id,
            "surgery_date": procedure.date if procedure and procedure.date else when, "handling": handling,
            "procedure_occurrence_id": procedure.procedure_occurrence_id if procedure else None, "source_key": key})
        return
    source_meaning = (procedure.meaning if procedure else None) if meaning == "found_on_ious" else (
        report.meaning if report else None)
    modality = MODALITY.get(source_meaning or "")
    if meaning == "lesion_size":
        factor = MM_PER_UNIT.get(value["unit"] or "mm")
        if value["number"] is None or factor is None:
            ctx.warnings["lesion_size without a number in mm or cm"] += 1
        else:
            ctx.sizes[(lesion_id, report_id or key)] = float(value["number"]) * factor
        return
    if modality is None or value["boolean"] is None:
        ctx.warnings[f"{meaning} observation without a study of known kind or a yes/no value"] += 1
        return
    found, not_found = BOOLEAN_FINDINGS[meaning]
    ctx.add("dlm_lesion_assessment", {
        "assessment_id": ctx.ids.id("dlm_lesion_assessment", key), "lesion_id": lesion_id, "person_id": person_id,
        "assessment_date": when, "modality": modality, "finding": found if value["boolean"] else not_found,
        "size_mm": None, "mri_protocol_met": None,
        "procedure_occurrence_id": (procedure.procedure_occurrence_id if procedure else
                                    report.procedure_occurrence_id if report else None),
        "source_key": key, "_report": report_id,
    })


def finalize(ctx: MapContext) -> None:
    """Attach sizes and MRI protocol flags to the assessments of the same report (F2, F6)."""
    for row in ctx.rows["dlm_lesion_assessment"]:
        report_id = row.pop("_report")
        row["size_mm"] = ctx.sizes.get((row["lesion_id"], report_id))
        if row["modality"] == "mri" and report_id in ctx.mri_protocol:
            row["mri_protocol_met"] = protocol_met(ctx.mri_protocol[report_id])
