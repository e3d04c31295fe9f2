"""Couinaud liver segments from codes or text ("segment VII", "S7", "seg 7", "S4a", "S5/6")."""
from __future__ import annotations

import re

_ROMAN = {"I": "1", "II": "2", "III": "3", "IV": "4", "V": "5", "VI": "6", "VII": "7", "VIII": "8"}
_NUMERAL = r"(?:VIII|VII|VI|IV|V|III|II|I|[1-8])"
_SEGMENT = re.compile(
    rf"(?:\bsegments?|\bseg\.?|\bS)\s*(?P<first>{_NUMERAL})(?P<sub>[ab])?(?:\s*(?:/|and|-)\s*S?(?P<second>{_NUMERAL}))?"
    r"(?![A-Za-z0-9])", re.IGNORECASE)


def _arabic(numeral: str) -> str:
    return _ROMAN.get(numeral.upper(), numeral)


def segment_from_text(text: str | None) -> str | None:
    """The first liver segment named in `text`, normalised to "1".."8", "4a"/"4b" or "5/6"."""
    if not text:
        return None
    match = _SEGMENT.search(text)
    if not match:
        return None
    first = _arabic(match.group("first"))
    if match.group("second"):
        return f"{first}/{_arabic(match.group('second'))}"
    return first + (match.group("sub") or "").lower()


def segment_from_meaning(meaning: str | None) -> str | None:
    """`liver_segment_7` -> "7" (segment codes are mapped to meanings in mappings/)."""
    if meaning and meaning.startswith("liver_segment_"):
        return meaning.removeprefix("liver_segment_")
    return None
