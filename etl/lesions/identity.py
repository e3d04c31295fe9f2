"""DLM_LESION from mCODE Tumor BodyStructures: one row per liver lesion with a stable identity.

| rule | destination | source | logic |
|---|---|---|---|
| L1 | lesion_id | BodyStructure.id | stable lineage id |
| L2 | lesion_source_value | identifier[0].value | keyed pseudonym (made at staging); the id if no identifier |
| L3 | liver_segment | locationQualifier codes (meaning liver_segment_N), else their text, location text, description | |
"""
from __future__ import annotations

from etl.lesions.segments import segment_from_meaning, segment_from_text
from etl.transform.context import MapContext


def _segment(body: dict, ctx: MapContext) -> str | None:
    qualifiers = [q for q in body.get("locationQualifier") or [] if isinstance(q, dict)]
    for qualifier in qualifiers:
        found = segment_from_meaning(ctx.codes.meaning(qualifier))
        if found:
            return found
    texts = [q.get("text") for q in qualifiers]
    texts += [c.get("display") for q in qualifiers for c in q.get("coding") or [] if isinstance(c, dict)]
    texts += [(body.get("location") or {}).get("text"), body.get("description")]
    for text in texts:
        found = segment_from_text(text)
        if found:
            return found
    return None


def transform(body: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(body)
    if person_id is None:
        return
    lesion_id = ctx.ids.id("dlm_lesion", "BodyStructure/" + body["id"])
    ctx.lesions[body["id"]] = lesion_id
    identifiers = [i.get("value") for i in body.get("identifier") or [] if isinstance(i, dict) and i.get("value")]
    ctx.add("dlm_lesion", {
        "lesion_id": lesion_id, "person_id": person_id,
        "lesion_source_value": (identifiers[0] if identifiers else body["id"])[:64],
        "liver_segment": _segment(body, ctx),
    })
