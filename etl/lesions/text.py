"""Lesion facts from report text (NOTE_NLP mentions), used where structured Observations are missing.

| rule | destination | source | logic |
|---|---|---|---|
| T1 | dlm_lesion | the patient's first imaging report with visible lesions | only for a patient without lesion BodyStructures: one lesion per visible mention (segment, then order within the segment) |
| T2 | (which lesion) | a mention's segment, number and order | a mention whose line numbers the lesion ("Lesion 3, segment V", "#3 S5", "病変3") goes to the lesion of that segment the baseline report gave that number; otherwise to the first lesion of the segment not yet linked in this report (per finding family). Mentions once every lesion of the segment is linked repeat them (e.g. the conclusion) or, with another finding, are counted as unlinked. Several BodyStructure lesions in one segment have no known order: such mentions are not linked (counted) |
| T3 | dlm_lesion_assessment | imaging (CT, MRI), operative (IOUS) and pathology mentions | date = the note's date; IOUS is contrast-enhanced (ce_ious) when the note says so; size from the mention; an MRI's mri_protocol_met from the technique the report states (etl.nlp.technique, rules K1-K3: true only when DWI and hepatobiliary phase were both done, unknown when neither is said) |
| T4 | dlm_lesion_handling | operative mentions resected / ablated / left_in_place | surgery date = the note's date |
| T5 | dlm_text_comparison (structured wins) | a structured fact of the same lesion, modality and date (handling: same lesion) | the text fact is not used; the pair is recorded, and a disagreement fails the warning check DLM13 |
"""
from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass

from etl.nlp.technique import mri_technique, protocol_met
from etl.transform.context import MapContext

MODALITY_OF_MEANING = {"imaging_ct": "ct", "imaging_mri": "mri", "pathology_report": "pathology"}
FAMILY = {"visible": "imaging", "not_visible": "imaging", "found_on_ious": "ious", "not_found_on_ious": "ious",
          "resected": "handling", "ablated": "handling", "left_in_place": "handling",
          "viable_tumor": "pathology", "no_viable_tumor": "pathology"}
_NUMBERED = re.compile(r"(?:\b(?:lesion|metastasis|nodule|tumou?r)\s*(?:no\.?|number|#)?\s*|病変\s*|#\s*)"
                       r"([0-9０-９]{1,2})(?![0-9０-９])", re.IGNORECASE)
TEXT_LESION = "text:"  # lesion_source_value prefix of lesions made from text (rule T1)
_CONTRAST = re.compile(r"contrast|CE-IOUS|Sonazoid|ソナゾイド|造影", re.IGNORECASE)


@dataclass
class TextNote:
    """What linking needs of one note: its mentions with the lesion number written before each, and
    whether it names contrast-enhanced IOUS, and for an MRI report whether DREAM's protocol was met (read once,
    so the note's text need not be kept)."""
    person_id: int
    key: str
    date: dt.date
    meaning: str | None
    mentions: list
    numbers: list[int | None]
    contrast: bool
    mri_protocol_met: bool | None = None

    @classmethod
    def read(cls, person_id: int, key: str, date: dt.date, meaning: str | None, text: str, mentions: list) -> TextNote:
        protocol = protocol_met(mri_technique(text)) if MODALITY_OF_MEANING.get(meaning or "") == "mri" else None
        return cls(person_id, key, date, meaning, mentions, [lesion_number(text, m.offset) for m in mentions],
                   bool(_CONTRAST.search(text)), protocol)


def finalize(ctx: MapContext) -> None:
    """Turn the notes' mentions into lesions, assessments and handlings (rules T1-T5)."""
    lesions: dict[int, list[dict]] = defaultdict(list)
    for row in ctx.rows["dlm_lesion"]:
        lesions[row["person_id"]].append(row)
    assessed = {(r["lesion_id"], r["modality"], r["assessment_date"]): (r["finding"], True)
                for r in ctx.rows["dlm_lesion_assessment"]}
    handled = {r["lesion_id"]: (r["handling"], r["surgery_date"], True) for r in ctx.rows["dlm_lesion_handling"]}
    notes: dict[int, list[TextNote]] = defaultdict(list)
    for note in ctx.text_notes:
        notes[note.person_id].append(note)
    numbers: dict[int, int] = {}   # text lesion id -> the number the baseline report gave it
    for person_id, mine in notes.items():
        mine.sort(key=lambda n: (n.date, n.key))
        if not lesions[person_id]:
            lesions[person_id] = _lesions_from_text(ctx, person_id, mine, numbers)
        for note in mine:
            _facts(ctx, note, lesions[person_id], numbers, assessed, handled)


def lesion_number(text: str, offset: int) -> int | None:
    """The lesion number written before a mention on its line ("Lesion 3, segment V", "#3 S5", "病変3")."""
    start = text.rfind("\n", 0, offset) + 1
    found = list(_NUMBERED.finditer(text, start, offset))
    return int(found[-1].group(1)) if found else None


def _lesions_from_text(ctx: MapContext, person_id: int, notes: list[TextNote], numbers: dict) -> list[dict]:
    for note in notes:
        visible = [(m, n) for m, n in zip(note.mentions, note.numbers) if m.finding == "visible" and m.segment]
        if MODALITY_OF_MEANING.get(note.meaning or "") in ("ct", "mri") and visible:
            seen: dict[str, int] = defaultdict(int)
            rows = []
            for mention, number in visible:
                seen[mention.segment] += 1
                label = f"{mention.segment}#{seen[mention.segment]}"
                rows.append(ctx.add("dlm_lesion", {
                    "lesion_id": ctx.ids.id("dlm_lesion", f"{note.key}#lesion{label}"), "person_id": person_id,
                    "lesion_source_value": f"{TEXT_LESION}{note.key.split('/')[0]}:S{label}"[:64],
                    "liver_segment": mention.segment}))
                if number is not None:
                    numbers[rows[-1]["lesion_id"]] = number
            return rows
    return []


def _facts(ctx: MapContext, note: TextNote, lesions: list[dict], numbers: dict, assessed: dict,
           handled: dict) -> None:
    by_segment: dict[str, list[dict]] = defaultdict(list)
    for lesion in lesions:
        by_segment[lesion["liver_segment"]].append(lesion)
    linked: dict[str, dict[int, str]] = defaultdict(dict)   # family -> lesion id -> its finding in this note
    for index, mention in enumerate(note.mentions):
        family = FAMILY.get(mention.finding)
        if family is None or not mention.segment:
            continue
        done = linked[family]
        candidates = by_segment.get(mention.segment, [])
        number = note.numbers[index]
        lesion = next((c for c in candidates if number is not None and numbers.get(c["lesion_id"]) == number), None)
        if lesion is None:
            if len(candidates) > 1 and not all(c["lesion_source_value"].startswith(TEXT_LESION) for c in candidates):
                # Several BodyStructure lesions in one segment: their order is unknown; a link would be a guess.
                ctx.warnings["text finding not linked (several structured lesions in its segment)"] += 1
                continue
            lesion = next((c for c in candidates if c["lesion_id"] not in done), None)
        if lesion is None or lesion["lesion_id"] in done:
            # Every lesion of the segment is linked already: a repeat (e.g. the conclusion) or a conflict.
            if mention.finding not in {done.get(c["lesion_id"]) for c in candidates}:
                ctx.warnings["text finding not linked to a lesion (segment and order)"] += 1
            continue
        done[lesion["lesion_id"]] = mention.finding
        _record(ctx, note, index, mention, family, lesion, assessed, handled)


def _record(ctx: MapContext, note: TextNote, index: int, mention, family: str, lesion: dict,
            assessed: dict, handled: dict) -> None:
    key = f"{note.key}#text{index}"
    lesion_id = lesion["lesion_id"]
    if family == "handling":
        if lesion_id in handled:
            finding, when, structured = handled[lesion_id]
            if structured:
                _compare(ctx, key, note, lesion_id, "handling", when, finding, mention.finding)
            return
        handled[lesion_id] = (mention.finding, note.date, False)
        ctx.add("dlm_lesion_handling", {
            "handling_id": ctx.ids.id("dlm_lesion_handling", key), "lesion_id": lesion_id,
            "person_id": note.person_id, "surgery_date": note.date, "handling": mention.finding,
            "procedure_occurrence_id": None, "source_key": key})
        return
    if family == "ious":
        modality = "ce_ious" if note.contrast else "ious"
    else:
        modality = MODALITY_OF_MEANING.get(note.meaning or "")
        if modality is None or (family == "pathology") != (modality == "pathology"):
            ctx.warnings["text finding in a report of unknown or other kind (not used)"] += 1
            return
    fact = (lesion_id, modality, note.date)
    if fact in assessed:
        finding, structured = assessed[fact]
        if structured:
            _compare(ctx, key, note, lesion_id, modality, note.date, finding, mention.finding)
        return
    assessed[fact] = (mention.finding, False)
    ctx.add("dlm_lesion_assessment", {
        "assessment_id": ctx.ids.id("dlm_lesion_assessment", key), "lesion_id": lesion_id,
        "person_id": note.person_id, "assessment_date": note.date, "modality": modality,
        "finding": mention.finding, "size_mm": mention.size_mm if mention.finding == "visible" else None,
        "mri_protocol_met": note.mri_protocol_met if modality == "mri" else None,
        "procedure_occurrence_id": None, "source_key": key})


def _compare(ctx: MapContext, key: str, note: TextNote, lesion_id: int, fact: str, when: dt.date,
             structured: str, text: str) -> None:
    ctx.add("dlm_text_comparison", {
        "comparison_id": ctx.ids.id("dlm_text_comparison", key), "lesion_id": lesion_id,
        "person_id": note.person_id, "fact": fact, "fact_date": when, "structured_finding": structured,
        "text_finding": text, "agrees": structured == text, "note_source_key": note.key[:200]})
