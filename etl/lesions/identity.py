"""DLM_LESION from mCODE Tumor BodyStructures: one row per liver lesion with a stable identity.

| rule | destination | source | logic |
|---|---|---|---|
| L1 | lesion_id | BodyStructure.id | stable lineage id |
| L2 | lesion_source_value | identifier[0].value | keyed pseudonym (made at staging); the id if no identifier |
| L3 | liver_segment | locationQualifier codes (meaning liver_segment_N), else their text, location text, description | |
| L4 | (which BodyStructures) | location / locationQualifier | a lesion only when located in the liver: a code with meaning `liver` or `liver_segment_N`, or liver named in the text; a BodyStructure with no location at all is taken as a lesion (the patient is in the liver-metastasis cohort) and counted; one located elsewhere is not a lesion |
"""
from __future__ import annotations

import re

from etl.lesions.segments import segment_from_meaning, segment_from_text
from etl.transform.context import MapContext

_LIVER_TEXT = re.compile(r"\b(liver|hepatic|hepato\w*)\b|肝", re.IGNORECASE)


def _location(body: dict, ctx: MapContext) -> str:
    """`liver`, `elsewhere` or `unknown` (rule L4)."""
    concepts = [body.get("location")] + list(body.get("locationQualifier") or [])
    concepts = [c for c in concepts if isinstance(c, dict)]
    if not concepts:
        return "unknown"
    for concept in concepts:
        meaning = ctx.codes.meaning(concept) or ""
        if meaning == "liver" or meaning.startswith("liver_segment_"):
            return "liver"
    texts = [c.get("text") or "" for c in concepts]
    texts += [coding.get("display") or "" for c in concepts for coding in c.get("coding") or [] if isinstance(coding, dict)]
    return "liver" if any(_LIVER_TEXT.search(t) for t in texts) else "elsewhere"


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
    where = _location(body, ctx)
    if where == "elsewhere":
        ctx.warnings["BodyStructure outside the liver (not a lesion)"] += 1
        return
    if where == "unknown":
        ctx.warnings["BodyStructure without a location (taken as a liver lesion)"] += 1
    lesion_id = ctx.ids.id("dlm_lesion", "BodyStructure/" + body["id"])
    ctx.lesions[body["id"]] = lesion_id
    identifiers = [i.get("value") for i in body.get("identifier") or [] if isinstance(i, dict) and i.get("value")]
    ctx.add("dlm_lesion", {
        "lesion_id": lesion_id, "person_id": person_id,
        "lesion_source_value": (identifiers[0] if identifiers else body["id"])[:64],
        "liver_segment": _segment(body, ctx),
    })
