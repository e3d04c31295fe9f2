"""NOTE_NLP: the lesion findings the report-text extractor (etl.nlp) reads in each NOTE.

| rule | destination | source | logic |
|---|---|---|---|
| P1 | (which notes) | the report's or document's meaning | imaging_ct, imaging_mri, imaging_note -> imaging; operative_note -> operative; pathology_report -> pathology; other notes are not read |
| P2 | snippet, offset, lexical_variant | the mention | the sentence (<= 250 characters; only when report text is stored, etl.transform.note.store_note_text, else empty), the character offset, the words naming the lesion |
| P3 | term_exists | finding | "N" for findings of absence (not_visible, not_found_on_ious, no_viable_tumor, no_recurrence), else "Y" |
| P4 | term_modifiers | finding, segment, size, context | `finding=...;segment=...;size_mm=...;` then the context seen (negated, hedged, historical) |
| P5 | note_nlp_concept_id, note_nlp_source_concept_id, section_concept_id | none | 0: the findings are the registry's own terms, with no verified OMOP concept |
| P6 | nlp_system, nlp_date | etl.nlp | `dlmreg-rules <version>`; the run's date |
"""
from __future__ import annotations

from etl.lesions.text import TextNote
from etl.transform.context import MapContext

KIND_OF_MEANING = {"imaging_ct": "imaging", "imaging_mri": "imaging", "imaging_note": "imaging",
                   "operative_note": "operative", "pathology_report": "pathology"}
ABSENT = {"not_visible", "not_found_on_ious", "no_viable_tumor", "no_recurrence"}


def reading(meaning: str | None, language: str | None) -> tuple[str, str] | None:
    """The (kind, lang) a note of this meaning and language is read as (rule P1), or None: not read."""
    kind = KIND_OF_MEANING.get(meaning or "")
    if kind is None:
        return None
    return kind, "ja" if (language or "").lower().startswith("ja") else "en" if language else "auto"


def from_note(ctx: MapContext, note_key: str, note_id: int, person_id: int, when, text: str,
              meaning: str | None, language: str | None) -> None:
    """Add the NOTE_NLP rows of one note (rules P1-P6); keep its mentions for the lesion facts (etl.lesions.text)."""
    from etl.nlp import NLP_SYSTEM, NLP_VERSION

    args = reading(meaning, language)
    if args is None:
        return
    mentions = ctx.reader.extract(text, *args)
    ctx.text_notes.append(TextNote.read(person_id, note_key, when, meaning, text, mentions))
    for index, mention in enumerate(mentions):
        modifiers = [f"finding={mention.finding}", f"segment={mention.segment or ''}"]
        if mention.size_mm is not None:
            modifiers.append(f"size_mm={mention.size_mm:g}")
        ctx.add("note_nlp", {
            "note_nlp_id": ctx.ids.id("note_nlp", f"{note_key}#nlp{index}"), "note_id": note_id,
            "section_concept_id": 0, "snippet": mention.snippet[:250] if ctx.store_note_text else None, "offset": str(mention.offset),
            "lexical_variant": mention.lexical_variant[:250] or mention.finding, "note_nlp_concept_id": 0,
            "note_nlp_source_concept_id": 0, "nlp_system": f"{NLP_SYSTEM} {NLP_VERSION}",
            "nlp_date": ctx.run_date, "term_exists": "N" if mention.finding in ABSENT else "Y",
            "term_temporal": None, "term_modifiers": ";".join(modifiers + list(mention.modifiers))[:2000]})
