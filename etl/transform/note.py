"""NOTE from report text: DiagnosticReport presentedForm / conclusion and DocumentReference attachments.

| rule | destination | source | logic |
|---|---|---|---|
| N1 | note_text | presentedForm / content.attachment (text/plain, inline data) else conclusion | base64-decoded UTF-8 |
| N2 | note_date | effectiveDateTime / issued; DocumentReference.date | |
| N3 | note_type_concept_id | report kind | radiology report 32841, pathology report 32835, else EHR note 32831 |
| N4 | note_class_concept_id, encoding_concept_id | none | 0: LOINC document classes and UTF-8 not verified in a public source |
| N5 | language_concept_id | attachment.language / resource.language | English 4180186 for `en*`, else 0 |
| N6 | note_source_value | the report or document code | |
"""
from __future__ import annotations

import base64
import binascii

from etl.transform.context import MapContext
from etl.transform.fhirdata import effective_dates, to_date, to_datetime

NOTE_TYPE = {"imaging_ct": "type_radiology_report", "imaging_mri": "type_radiology_report",
             "pathology_report": "type_pathology_report"}


def attachment_text(attachment: dict) -> str | None:
    """Text of an inline text/* attachment, or None (binary URLs and PDFs come with the NLP issue)."""
    content_type = (attachment.get("contentType") or "text/plain").split(";")[0].strip().lower()
    if not content_type.startswith("text/") or not attachment.get("data"):
        return None
    try:
        return base64.b64decode(attachment["data"], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _note(ctx: MapContext, key: str, person_id: int, when, when_text, title: str, text: str, type_meaning: str,
          language: str | None, source: str) -> None:
    english = (language or "en").lower().startswith("en")
    ctx.add("note", {
        "note_id": ctx.ids.id("note", key), "person_id": person_id, "note_date": when,
        "note_datetime": to_datetime(when_text), "note_type_concept_id": ctx.codes.convention(type_meaning),
        "note_class_concept_id": 0, "note_title": title[:250], "note_text": text, "encoding_concept_id": 0,
        "language_concept_id": ctx.codes.convention("language_english") if english else 0,
        "note_source_value": source[:50],
    })


def from_diagnostic_report(report: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(report)
    when, _ = effective_dates(report, "effectiveDateTime", "effectivePeriod", "issued")
    info = ctx.reports.get(report["id"])
    if person_id is None or when is None:
        return
    forms = [f for f in report.get("presentedForm") or [] if isinstance(f, dict)]
    texts = [t for t in (attachment_text(f) for f in forms) if t]
    text = "\n\n".join(texts) or report.get("conclusion")
    if not text:
        return
    language = next((f.get("language") for f in forms if f.get("language")), report.get("language"))
    code = (report.get("code") or {})
    source = ((code.get("coding") or [{}])[0].get("code")) or code.get("text") or ""
    _note(ctx, "DiagnosticReport/" + report["id"], person_id, when, report.get("effectiveDateTime"),
          code.get("text") or "report", text, NOTE_TYPE.get(info.meaning if info else None, "type_ehr_note"),
          language, source)


def from_document_reference(document: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(document)
    when = to_date(document.get("date")) or effective_dates(document.get("context") or {}, "period")[0]
    if person_id is None or when is None:
        ctx.warnings["DocumentReference without person or date (not mapped)"] += 1
        return
    attachments = [c.get("attachment") or {} for c in document.get("content") or [] if isinstance(c, dict)]
    texts = [t for t in (attachment_text(a) for a in attachments) if t]
    if not texts:
        ctx.warnings["DocumentReference without inline text (not mapped)"] += 1
        return
    mapping, source = ctx.codes.lookup(document.get("type"), "DocumentReference.type")
    language = next((a.get("language") for a in attachments if a.get("language")), document.get("language"))
    _note(ctx, "DocumentReference/" + document["id"], person_id, when, document.get("date"),
          (document.get("type") or {}).get("text") or (mapping.display if mapping else "document"),
          "\n\n".join(texts), NOTE_TYPE.get(mapping.meaning if mapping else None, "type_ehr_note"), language, source)
