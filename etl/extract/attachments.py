"""Report attachments given by URL (a `Binary` on the same FHIR server) are fetched when the report is
extracted and inlined as `data`, so that staging holds the text NOTE and NOTE_NLP are made from.

Only URLs on the server's own origin are fetched (credentials never go elsewhere), each at most
MAX_BYTES. A Binary answered as FHIR JSON gives its `data` and `contentType`; any other answer is taken
as the content itself. An attachment that cannot be fetched stays as it was, and the reason is returned
for the run's report.
"""
from __future__ import annotations

import base64
import json
from urllib.parse import urljoin

from etl.extract.errors import ExtractError
from etl.extract.http import FhirHttp, loggable, same_origin

MAX_BYTES = 20 * 2**20
REPORT_TYPES = ("DiagnosticReport", "DocumentReference")


def _attachments(resource: dict) -> list[dict]:
    forms = resource.get("presentedForm") if resource.get("resourceType") == "DiagnosticReport" else [
        c.get("attachment") for c in resource.get("content") or [] if isinstance(c, dict)]
    return [a for a in forms or [] if isinstance(a, dict)]


def inline_attachments(resource: dict, http: FhirHttp, base_url: str) -> list[str]:
    """Fetch the URL attachments of a report into `data` (in place); returns the problems met."""
    if resource.get("resourceType") not in REPORT_TYPES:
        return []
    problems = []
    for attachment in _attachments(resource):
        url = attachment.get("url")
        if not isinstance(url, str) or not url.strip() or attachment.get("data"):
            continue
        target = urljoin(base_url.rstrip("/") + "/", url.strip())
        if not same_origin(target, base_url):
            problems.append(f"attachment on another server not fetched ({loggable(target)})")
            continue
        try:
            response = http.get(target, headers={"Accept": "application/fhir+json, */*;q=0.5"},
                                what="report attachment")
        except ExtractError as exc:
            problems.append(f"attachment {loggable(target)} not fetched: {exc}")
            continue
        body = response.content
        if len(body) > MAX_BYTES:
            problems.append(f"attachment {loggable(target)} larger than {MAX_BYTES} bytes: not inlined")
            continue
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type in ("application/fhir+json", "application/json"):
            try:
                binary = json.loads(body)
            except ValueError:
                binary = None
            if not isinstance(binary, dict) or binary.get("resourceType") != "Binary" or not binary.get("data"):
                problems.append(f"attachment {loggable(target)} is not a Binary with data")
                continue
            attachment["data"] = binary["data"]
            attachment.setdefault("contentType", binary.get("contentType"))
        else:
            attachment["data"] = base64.b64encode(body).decode()
            attachment.setdefault("contentType", content_type or None)
    return problems
