"""Rule-based extraction of liver-lesion findings from report text (English and Japanese).

    >>> extract("The S7 lesion is no longer visible. S4a: 6 mm.", "imaging")
    [Mention(segment='7', finding='not_visible', ...), Mention(segment='4a', finding='visible', size_mm=6.0, ...)]

One Mention per lesion finding, named by its Couinaud segment. The engine is small and readable:
text.py splits sections, sentences and clauses; segments.py finds the segments; english.py / japanese.py hold
the trigger lexicons and context cues as data; context.py applies negation, hedging and history to the
triggers and reads sizes; engine.py decides which finding and size belong to which segment. Rule ids
(C1-C5, E1-E8) are in the docstrings of context.py and engine.py and cited by tests/test_nlp_extract.py.
No model, no network, no dependency beyond the standard library.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

NLP_SYSTEM = "dlmreg-rules"
NLP_VERSION = "1.0"
KINDS = {"imaging": ("visible", "not_visible"),
         "operative": ("resected", "ablated", "left_in_place", "found_on_ious", "not_found_on_ious"),
         "pathology": ("viable_tumor", "no_viable_tumor"),
         "followup": ("recurrence", "no_recurrence")}
LANGS = ("en", "ja")


@dataclass(frozen=True)
class Mention:
    segment: str | None          # Couinaud "1".."8", "4a"/"4b", "5/6" across two; None: report-level follow-up
    finding: str                 # one of KINDS[kind]
    size_mm: float | None        # only when stated (cm converted to mm)
    offset: int                  # character offset of lexical_variant in the text
    lexical_variant: str         # the words naming the lesion / segment as written
    snippet: str                 # the sentence or line it came from (<= 250 characters)
    modifiers: tuple[str, ...]   # context seen: "negated", "hedged", "historical"


_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")


def detect_language(text: str) -> str:
    """"ja" when kana or kanji make up a noticeable share of the letters, else "en"."""
    letters = sum(ch.isalpha() for ch in text)
    japanese = len(_JAPANESE.findall(text))
    return "ja" if japanese >= 2 and japanese >= 0.1 * max(letters, 1) else "en"


def extract(text: str, kind: str, lang: str = "auto") -> list[Mention]:
    """The lesion findings of one report, in text order.

    Parameters: `text` the report; `kind` one of KINDS ("imaging", "operative", "pathology", "followup");
    `lang` "en", "ja" or "auto" (detect_language).
    Returns: Mentions, one per lesion finding (see the module docstring of etl.nlp.engine for the rules).
    Raises ValueError for an unknown kind or language.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}; expected one of {', '.join(KINDS)}")
    if lang == "auto":
        lang = detect_language(text or "")
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; expected en, ja or auto")
    if not text or not text.strip():
        return []
    from etl.nlp.engine import run

    mentions = []
    for found in run(text, kind, lang):
        snippet = " ".join(text[found.sentence.start:found.sentence.end].split())[:250]
        mentions.append(Mention(found.segment, found.finding, found.size_mm, found.offset,
                                text[found.offset:found.end], snippet, found.modifiers))
    return mentions


__all__ = ["KINDS", "NLP_SYSTEM", "NLP_VERSION", "Mention", "detect_language", "extract"]
