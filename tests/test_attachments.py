"""Report attachments given by URL are fetched from the same FHIR server and inlined (issue #7)."""
from __future__ import annotations

import base64
import json

from etl.extract.http import FhirHttp
from etl.extract.rest import RestSource
from tests.fhir_server import FhirTestServer

TEXT = "MRI LIVER\nSegment VII: no longer visible."


def _document(doc_id: str, url: str) -> dict:
    return {"resourceType": "DocumentReference", "id": doc_id, "status": "current",
            "subject": {"reference": "Patient/p1"}, "date": "2026-01-05T10:00:00Z",
            "content": [{"attachment": {"url": url, "language": "en"}}]}


def test_binary_attachments_are_inlined_and_foreign_ones_left(tmp_path):
    with FhirTestServer() as server:
        server.upsert({"resourceType": "Binary", "id": "b1", "contentType": "text/plain",
                       "data": base64.b64encode(TEXT.encode()).decode()})
        server.upsert(_document("d1", "Binary/b1"))
        server.upsert(_document("d2", f"{server.url}/Binary/b1"))
        server.upsert(_document("d3", "https://elsewhere.example.org/Binary/b1"))
        server.upsert(_document("d4", "Binary/missing"))
        source = RestSource(server.url, FhirHttp(server.url, None, max_retries=0), ("DocumentReference",))
        with source:
            records = {json.loads(r.text)["id"]: json.loads(r.text) for r in source.records()}
        fetched = [r for r in server.request_log if "/Binary/" in r["path"]]
    for doc in ("d1", "d2"):
        attachment = records[doc]["content"][0]["attachment"]
        assert base64.b64decode(attachment["data"]).decode() == TEXT and attachment["contentType"] == "text/plain"
    assert "data" not in records["d3"]["content"][0]["attachment"]
    assert "data" not in records["d4"]["content"][0]["attachment"]
    assert len(fetched) == 3  # d1, d2 and the missing one; never the other server
    assert any("another server" in w for w in source.warnings)
    assert any("Binary/missing" in w and "not fetched" in w for w in source.warnings)
