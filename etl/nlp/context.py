"""Finding triggers, sizes and their context (negation, hedging, history) inside one clause.

Rules (ids cited by tests/test_nlp_extract.py):
  C1 overlapping triggers: the longest wins ("not visible" over "visible", "切除せず" over "切除")
  C2 negation: a cue before the trigger in the same clause with no comma / conjunction in between
     ("no residual lesion in S7"), or a negative predicate right after it (病変を認めない, "tumour: none"),
     reverses a positive finding (visible -> not_visible, resected -> left_in_place, ...); "noflip" triggers
     such as "no change" keep their finding
  C3 hedging: "possible", "cannot be excluded", 疑い, 否定できない ... in the clause mark the trigger hedged;
     a hedged presence is still a presence
  C4 history: a trigger or size just after "previously" / before "on the baseline study", "in 2024", or in
     parentheses about the past ("(baseline 25 mm)", "(前回20mm)"), or in a history section, is historical;
     change words (smaller, disappeared, 縮小, 消失) describe the current study and are never historical
  C5 sizes: "12 mm", "1.2 cm", "12 x 10 mm" (largest), 径12mm, 12mm大; an old size ("25 mm -> 12 mm",
     "25mmから") and margins / ablation zones / nodes are not lesion sizes
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from etl.nlp import english, japanese

LEXICON = {"en": english, "ja": japanese}
FLIP = {"visible": "not_visible", "found_on_ious": "not_found_on_ious", "viable_tumor": "no_viable_tumor",
        "recurrence": "no_recurrence", "resected": "left_in_place", "ablated": "left_in_place"}
AXIS = {"visible": "status", "not_visible": "status", "resected": "handling", "ablated": "handling",
        "left_in_place": "handling", "found_on_ious": "ious", "not_found_on_ious": "ious",
        "viable_tumor": "viability", "no_viable_tumor": "viability", "not_assessable": "viability", "recurrence": "recurrence",
        "no_recurrence": "recurrence"}
# Words of change compare with a prior study but state the current status: never historical (rule C4).
_CHANGE = re.compile(r"smaller|larger|decreas|increas|reduc|shr[iau]nk|enlarg|grow|grew|regress|respon|unchanged|"
                     r"stable|change|persist|new|resolv|disappear|no longer|消失|縮小|増大|不変|変化|出現|新|残存",
                     re.IGNORECASE)


@dataclass
class Trigger:
    start: int
    end: int
    finding: str
    weak: bool
    text: str
    negated: bool = False
    hedged: bool = False
    historical: bool = False

    @property
    def axis(self) -> str:
        return AXIS[self.finding]


@dataclass
class Size:
    start: int
    end: int
    mm: float
    historical: bool = False
    modifiers: set = field(default_factory=set)


@lru_cache(maxsize=None)
def _compiled(lang: str, kind: str) -> tuple[list[tuple[re.Pattern, str, str]], str | None]:
    """The kind's trigger patterns (wrapped so they match whole words) and the finding of a bare size."""
    entries, size_finding = [], None
    for pattern, finding, flags in LEXICON[lang].TRIGGERS[kind]:
        alternatives = pattern.split("|")
        if "SIZE" in alternatives:
            if "ious_local" not in flags:
                size_finding = finding
            pattern = "|".join(a for a in alternatives if a != "SIZE")
        entries.append((re.compile(rf"(?<![A-Za-z])(?:{pattern})(?![A-Za-z])", re.IGNORECASE), finding, flags))
    return entries, size_finding


@lru_cache(maxsize=None)
def _cue(lang: str, name: str) -> re.Pattern:
    return re.compile(getattr(LEXICON[lang], name), re.IGNORECASE)


def triggers(text: str, start: int, end: int, kind: str, lang: str, historical_section: bool,
             ious_note: bool = False, ious_local: bool = False, past_clause: bool = False) -> list[Trigger]:
    """The triggers of the clause text[start:end] with their context (rules C1-C4).

    `ious_note`: the operative note uses intraoperative ultrasound, so a bare "seen" / "not identified"
    speaks of it (lexicon flag "ious"); `ious_local`: the sentence or its heading is about the IOUS, so a
    lesion described there was found on it (flag "ious_local"); `past_clause`: the clause opens on the past
    ("Previously, ...", 前回MRIでは), so all but words of change are historical.
    """
    entries, _ = _compiled(lang, kind)
    found = []
    for pattern, finding, flags in entries:
        if ("ious" in flags.split() and not ious_note) or ("ious_local" in flags.split() and not ious_local):
            continue
        for match in pattern.finditer(text, start, end):
            if match.end() > match.start():
                found.append((match.start(), match.end(), finding, flags))
    found.sort(key=lambda f: (-(f[1] - f[0]), f[0]))
    kept: list[tuple] = []
    for item in found:                                            # C1
        if all(item[1] <= k[0] or item[0] >= k[1] for k in kept):
            kept.append(item)
    kept.sort()
    # "no change in the S7 lesion": the "no" of a trigger that keeps its finding negates nothing else
    masked = _mask(text, start, end, [(k[0], k[1]) for k in kept if "noflip" in k[3]])
    hedge = _cue(lang, "HEDGE").search(text, start, end)
    out = []
    for s, e, finding, flags in kept:
        trig = Trigger(s, e, finding, "weak" in flags, text[s:e])
        if finding in FLIP and "noflip" not in flags and _negated(text, masked, start, end, s, e, lang):   # C2
            trig.finding, trig.negated = FLIP[finding], True
        elif finding not in FLIP and re.search(r"\b(?:no|not|cannot|without)\b|ない|ず|ません|なし", trig.text,
                                               re.IGNORECASE):
            trig.negated = True
        trig.hedged = bool(hedge)                                                                             # C3
        trig.historical = historical_section or (not _CHANGE.search(trig.text) and (
            past_clause or _historical(text, start, end, s, e, lang, "HISTORY_BEFORE_TRIGGER")))
        out.append(trig)
    return out


def _mask(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> str:
    chars = list(text[start:end])
    for s, e in spans:
        for i in range(s - start, e - start):
            chars[i] = " "
    return "".join(chars)


def _negated(text: str, masked: str, start: int, end: int, s: int, e: int, lang: str) -> bool:
    before = masked[max(0, s - start - 60):s - start]
    cues = list(_cue(lang, "NEGATION_BEFORE").finditer(before))
    if cues and not _cue(lang, "NEGATION_BLOCK").search(before[cues[-1].end():]):
        return True
    return bool(_cue(lang, "NEGATION_AFTER").search(text[e:end]))


def _historical(text: str, start: int, end: int, s: int, e: int, lang: str, before_name: str) -> bool:
    if _cue(lang, before_name).search(text[max(start, s - 40):s]):
        return True
    if _cue(lang, "HISTORY_AFTER").search(text[e:end]):
        return True
    return _in_past_parentheses(text, start, end, s, lang)


def _in_past_parentheses(text: str, start: int, end: int, s: int, lang: str) -> bool:
    open_at = max(text.rfind("(", start, s), text.rfind("（", start, s))
    if open_at < 0 or max(text.rfind(")", open_at, s), text.rfind("）", open_at, s)) >= 0:
        return False
    close = [i for i in (text.find(")", s, end), text.find("）", s, end)) if i >= 0]
    inside = text[open_at:min(close) if close else end]
    return bool(_cue(lang, "HISTORY_PAREN").search(inside))


_SIZE = re.compile(
    r"(?P<a>\d+(?:\.\d+)?)\s*(?P<ua>mm|cm)?(?:\s*[x×*]\s*(?P<b>\d+(?:\.\d+)?)\s*(?:mm|cm)?)?"
    r"(?:\s*[x×*]\s*(?P<c>\d+(?:\.\d+)?))?\s*-?\s*(?P<u>mm|cm|ミリ|センチ|ｍｍ)(?![A-Za-z])", re.IGNORECASE)
_NOT_LESION_SIZE = re.compile(r"margin|clearance|断端|ablation\s+zone|焼灼(?:範囲|域)|node|リンパ節|cuff|wall|壁|"
                              r"cycles?|コース|duct|管", re.IGNORECASE)


def sizes(text: str, start: int, end: int, lang: str) -> list[Size]:
    """Lesion sizes in the clause text[start:end] (rule C5), each marked historical or not."""
    out = []
    for match in _SIZE.finditer(text, start, end):
        values = [float(v) for v in (match.group("a"), match.group("b"), match.group("c")) if v]
        unit = match.group("u").lower()
        factor = 10.0 if unit in ("cm", "センチ") else 1.0
        if match.group("ua") and match.group("ua").lower() == "mm":
            factor = 1.0
        mm = round(max(values) * factor, 1)
        around = text[max(start, match.start() - 25):match.start()] + " " + text[match.end():min(end, match.end() + 12)]
        if _NOT_LESION_SIZE.search(around) or mm <= 0 or mm > 300:
            continue
        old = bool(_cue(lang, "SIZE_OLD_AFTER").search(text[match.end():end]))
        historical = old or _historical(text, start, end, match.start(), match.end(), lang, "HISTORY_BEFORE_SIZE")
        if re.search(_cue(lang, "CURRENT").pattern + r"\W*(?:\w+\W+)?$", text[max(start, match.start() - 20):match.start()],
                     re.IGNORECASE):
            historical = old
        out.append(Size(match.start(), match.end(), mm, historical))
    return out


def mentions_ious(text: str) -> bool:
    """Does the (normalised) text mention intraoperative ultrasound, in either language?"""
    return any(re.search(LEXICON[lang].IOUS, text, re.IGNORECASE) for lang in LEXICON)


def size_finding(kind: str, lang: str) -> str | None:
    """The finding a bare size implies for this kind ("S7: 12 mm" on imaging -> visible)."""
    return _compiled(lang, kind)[1]
