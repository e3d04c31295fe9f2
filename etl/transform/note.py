"""NOTE from report text: DiagnosticReport presentedForm / conclusion and DocumentReference attachments.

| rule | destination | source | logic |
|---|---|---|---|
| N1 | note_text | presentedForm / content.attachment (inline data) else conclusion | base64-decoded: text/plain as UTF-8, text/html without tags, application/pdf its text layer; `url` attachments are not fetched. Stored only when `DLMREG_STORE_NOTE_TEXT` is on; otherwise "" (the text is read for its facts, NOTE_NLP, and not kept) |
| N2 | note_date | effectiveDateTime / issued; DocumentReference.date | |
| N3 | note_type_concept_id | report kind | radiology report 32841, pathology report 32835, else EHR note 32831 |
| N4 | note_class_concept_id, encoding_concept_id | none | 0: LOINC document classes and UTF-8 not verified in a public source |
| N5 | language_concept_id | attachment.language / resource.language | English 4180186 for `en*`, else 0 |
| N6 | note_source_value | the report or document code | |
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from html.parser import HTMLParser

from etl.transform import note_nlp
from etl.transform.context import MapContext
from etl.transform.fhirdata import effective_dates, to_date, to_datetime
from etl.vocabulary import CodeMap

STORE_TEXT_ENV = "DLMREG_STORE_NOTE_TEXT"


def store_note_text() -> bool:
    """Whether report text is kept in NOTE.note_text and NOTE_NLP.snippet (off unless configured: report
    text can name people, so by default only the facts extracted from it are stored)."""
    return os.environ.get(STORE_TEXT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


NOTE_TYPE = {"imaging_ct": "type_radiology_report", "imaging_mri": "type_radiology_report",
             "pathology_report": "type_pathology_report"}


def attachment_text(attachment: dict) -> str | None:
    """Text of an inline attachment (rule N1): text/plain, text/html (tags dropped) or a PDF's text layer;
    None for anything else, undecodable data or a PDF without text. (`url` attachments are not fetched.)"""
    content_type = (attachment.get("contentType") or "text/plain").split(";")[0].strip().lower()
    if not attachment.get("data"):
        return None
    try:
        data = base64.b64decode(attachment["data"], validate=True)
        if content_type == "application/pdf":
            return _pdf_text(data)
        if not content_type.startswith("text/"):
            return None
        text = data.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return _html_text(text) if content_type in ("text/html", "application/xhtml+xml") else text


class _TextOfHtml(HTMLParser):
    """Visible text of an HTML report; block elements become line breaks (sentences stay apart)."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "section"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style")
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self.hidden:
            self.hidden -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def _html_text(text: str) -> str | None:
    parser = _TextOfHtml()
    parser.feed(text)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    return "\n".join(line for line in lines if line) or None


def _pdf_text(data: bytes) -> str | None:
    """The text layer of a PDF (a scanned PDF without one gives None)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        text = "\n".join(page.extract_text() or "" for page in reader.pages).strip()
    except (PdfReadError, ValueError, KeyError, TypeError):
        return None
    return text or None


def _note(ctx: MapContext, key: str, person_id: int, when, when_text, title: str, text: str, meaning: str | None,
          language: str | None, source: str) -> None:
    english = (language or "en").lower().startswith("en")
    type_meaning = NOTE_TYPE.get(meaning or "", "type_ehr_note")
    note_id = ctx.ids.id("note", key)
    ctx.add("note", {
        "note_id": note_id, "person_id": person_id, "note_date": when,
        "note_datetime": to_datetime(when_text), "note_type_concept_id": ctx.codes.convention(type_meaning),
        "note_class_concept_id": 0, "note_title": title[:250], "note_text": text if ctx.store_note_text else "", "encoding_concept_id": 0,
        "language_concept_id": ctx.codes.convention("language_english") if english else 0,
        "note_source_value": source[:50],
    })
    note_nlp.from_note(ctx, key, note_id, person_id, when, text, meaning, language)


def from_diagnostic_report(report: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(report)
    when, _ = effective_dates(report, "effectiveDateTime", "effectivePeriod", "issued")
    info = ctx.reports.get(report["id"])
    if person_id is None or when is None:
        return
    found = report_text(report)
    if found is None:
        return
    text, language = found
    code = (report.get("code") or {})
    source = ((code.get("coding") or [{}])[0].get("code")) or code.get("text") or ""
    _note(ctx, "DiagnosticReport/" + report["id"], person_id, when, report.get("effectiveDateTime"),
          code.get("text") or "report", text, info.meaning if info else None, language, source)


def from_document_reference(document: dict, ctx: MapContext) -> None:
    person_id = ctx.person_id(document)
    when = to_date(document.get("date")) or effective_dates(document.get("context") or {}, "period")[0]
    if person_id is None or when is None:
        ctx.warnings["DocumentReference without person or date (not mapped)"] += 1
        return
    found = document_text(document)
    if found is None:
        ctx.warnings["DocumentReference without inline text (not mapped)"] += 1
        return
    mapping, source = ctx.codes.lookup(document.get("type"), "DocumentReference.type")
    _note(ctx, "DocumentReference/" + document["id"], person_id, when, document.get("date"),
          (document.get("type") or {}).get("text") or (mapping.display if mapping else "document"),
          found[0], mapping.meaning if mapping else None, found[1], source)


def report_text(report: dict) -> tuple[str, str | None] | None:
    """A DiagnosticReport's text (its inline presentedForm, else its conclusion) and language (rule N1)."""
    forms = [f for f in report.get("presentedForm") or [] if isinstance(f, dict)]
    texts = [t for t in (attachment_text(f) for f in forms) if t]
    text = "\n\n".join(texts) or report.get("conclusion")
    if not text or not isinstance(text, str):
        return None
    return text, next((f.get("language") for f in forms if f.get("language")), report.get("language"))


def document_text(document: dict) -> tuple[str, str | None] | None:
    """A DocumentReference's text (its inline attachments) and language (rule N1)."""
    attachments = [c.get("attachment") or {} for c in document.get("content") or [] if isinstance(c, dict)]
    texts = [t for t in (attachment_text(a) for a in attachments) if t]
    if not texts:
        return None
    return "\n\n".join(texts), next((a.get("language") for a in attachments if a.get("language")),
                                     document.get("language"))


def reader_job(resource: dict, codes: CodeMap) -> tuple[str, str, str] | None:
    """The (text, kind, lang) that mapping `resource` will give the report-text reader, as far as the
    resource alone tells (etl.nlp.reader reads it ahead; a wrong guess only costs a text read twice)."""
    if resource.get("resourceType") == "DiagnosticReport":
        found, meaning = report_text(resource), codes.meaning(resource.get("code"))
    elif resource.get("resourceType") == "DocumentReference":
        found, meaning = document_text(resource), codes.meaning(resource.get("type"))
    else:
        return None
    reading = note_nlp.reading(meaning, found[1]) if found else None
    return (found[0], *reading) if reading else None
