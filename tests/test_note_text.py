"""Report text from attachments (NOTE rule N1): plain text, HTML and a PDF's text layer."""
from __future__ import annotations

import base64

from etl.transform.note import attachment_text


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer holds `text` (Helvetica), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_plain_text_and_charset_parameter():
    assert attachment_text({"contentType": "text/plain; charset=utf-8", "data": _b64("肝S7 消失".encode())}) == "肝S7 消失"


def test_html_keeps_visible_text_and_block_breaks():
    html = ("<html><head><style>p {color: red}</style><script>var s7 = 1;</script></head><body>"
            "<h1>MRI LIVER</h1><p>Segment VII lesion &amp; no longer seen.</p><ul><li>S3: 12 mm</li></ul></body></html>")
    text = attachment_text({"contentType": "text/html", "data": _b64(html.encode())})
    assert text.splitlines() == ["MRI LIVER", "Segment VII lesion & no longer seen.", "S3: 12 mm"]


def test_pdf_text_layer_is_read():
    pdf = minimal_pdf("Segment VII lesion no longer visible.")
    assert attachment_text({"contentType": "application/pdf", "data": _b64(pdf)}) == \
        "Segment VII lesion no longer visible."


def test_unreadable_or_unsupported_attachments_give_none():
    assert attachment_text({"contentType": "application/pdf", "data": _b64(b"%PDF-1.4 broken")}) is None
    assert attachment_text({"contentType": "image/png", "data": _b64(b"\x89PNG")}) is None
    assert attachment_text({"contentType": "text/plain", "data": "not base64!"}) is None
    assert attachment_text({"contentType": "text/plain", "url": "Binary/1"}) is None
