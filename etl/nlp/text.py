"""Text plumbing: width normalisation that keeps offsets, sections, sentences and clauses.

Every function works on spans of the original text, so a Mention's offset points at the words as written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Full-width ASCII (Ｓ７, １２ｍｍ, ：) and the ideographic space map one-to-one onto ASCII: same length.
_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_WIDTH.update({0x3000: 0x20, 0x2212: 0x2D, 0xFF5E: 0x7E, 0x339C: 0x6D, 0x2010: 0x2D, 0x2011: 0x2D})


def normalize(text: str) -> str:
    """Half-width copy of `text` with exactly the same length (so offsets carry over)."""
    return text.translate(_WIDTH)


# Section headers. Historical sections describe the past; their statements are not the current status.
_HEADER = re.compile(r"^\s*(?:\d+[.)]\s*)?[【\[]?(?P<name>[A-Za-z][A-Za-z /&-]{1,40}?|[^\x00-\x7f\s:：】]{1,12})[】\]]?"
                     r"\s*(?:[:：]|(?<=】)|(?<=\])|$)")
_HISTORICAL_SECTION = re.compile(
    r"^(?:(?:clinical\s+)?history|past history|medical history|indication|clinical(?:\s+(?:information|details|"
    r"notes?|indication))?|comparison|compared?|prior(?:\s+\w+)?|previous(?:\s+\w+)?|background|reason for .*|"
    r"既往(?:歴)?|現病歴|病歴|臨床(?:情報|経過|診断)?|経過|比較|前回(?:所見|検査)?|依頼(?:目的|内容)?|検査目的|"
    r"臨床的事項)$", re.IGNORECASE)
_CURRENT_SECTION = re.compile(
    r"^(?:findings?|impressions?|conclusions?|results?|report|assessment|summary|diagnosis|diagnoses|opinion|"
    r"microscop\w*|macroscop\w*|gross|specimen|procedure|operation|operative findings|details|lesions?|liver|"
    r"所見|画像所見|診断|結論|まとめ|総括|病理診断|組織所見|肉眼所見|手術所見|術式|所見と処置|処置|検体|"
    r"考察|結果|印象|手術記録|病理診断報告書|【?所見】?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    historical: bool          # inside a history / comparison / indication section
    header: str | None        # the section name, lower-case
    line_start: bool          # starts a line (bullets and table rows are sentences of their own)


_ABBREV = re.compile(r"\b(?:seg|segs|approx|e\.g|i\.e|vs|cf|dr|fig|incl|prev|ca)\.$",
                     re.IGNORECASE)
_SENT_END = re.compile(r"[.!?](?=\s+[\"(\[A-Z0-9\-•*])|[。！？]|[.!?]$")


def sentences(text: str) -> list[Sentence]:
    """Sentences (and bullet / table lines) with their section context, in text order."""
    out: list[Sentence] = []
    section_historical, header = False, None
    pos = 0
    for raw_line in text.splitlines(keepends=True):
        line_start, line_end = pos, pos + len(raw_line.rstrip("\r\n"))
        pos += len(raw_line)
        line = text[line_start:line_end]
        if not line.strip():
            continue
        inline_historical = None
        match = _HEADER.match(line)
        if match and (_HISTORICAL_SECTION.match(match.group("name").strip())
                      or _CURRENT_SECTION.match(match.group("name").strip())):
            name = match.group("name").strip()
            rest = line[match.end():].strip()
            is_hist = bool(_HISTORICAL_SECTION.match(name))
            header = name.lower()
            if rest:
                inline_historical = is_hist
                if not is_hist:
                    section_historical = False
            else:
                section_historical = is_hist
        historical = section_historical if inline_historical is None else inline_historical
        first = True
        for start, end in _split(line):
            out.append(Sentence(line_start + start, line_start + end, historical, header, first))
            first = False
    return out


def _split(line: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _SENT_END.finditer(line):
        end = match.end()
        if match.group(0) == "." and _ABBREV.search(line[max(0, end - 8):end]) and not line[end:].strip() == "":
            continue
        if line[start:end].strip():
            spans.append((start, end))
        start = end
    if line[start:].strip():
        spans.append((start, len(line)))
    return spans


# Clause boundaries inside a sentence: a finding word does not reach across these.
_CLAUSE_EN = re.compile(r";|\b(?:but|however|whereas|while|although|though|except)\b|(?<=[a-z]),\s+(?=which\b)",
                        re.IGNORECASE)
_CLAUSE_JA = re.compile(r"が、|けれども|一方|;|；")


def clauses(text: str, start: int, end: int, lang: str) -> list[tuple[int, int]]:
    """Clause spans of the sentence text[start:end]."""
    pattern = _CLAUSE_JA if lang == "ja" else _CLAUSE_EN
    spans, last = [], start
    for match in pattern.finditer(text, start, end):
        spans.append((last, match.start()))
        last = match.end() if match.group(0) in (";", "；") else match.start()
    spans.append((last, end))
    return [(s, e) for s, e in spans if e > s]
