"""Couinaud segment mentions in report text, English and Japanese.

A *hit* is one place in the text naming liver segments; it stands for one or more lesions:
"S5/6" and "a lesion straddling segments 4a and 8" are one lesion in two segments ("5/6", "4a/8", lower
first), "segments 5 and 8" or "segments 2, 3 and 7" are one lesion per segment. Lung segments (肺S6,
"right lower lobe S6") and sacral levels (L5/S1) are not liver segments and are dropped.

The text searched must be width-normalised (etl.nlp.text.normalize) so offsets match the original.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_ROMAN = {"I": "1", "II": "2", "III": "3", "IV": "4", "V": "5", "VI": "6", "VII": "7", "VIII": "8"}
_NUM = r"(?:VIII|VII|VI|IV|V|III|II|I|[1-8])(?:[ab](?![a-z]))?"
_NUM_END = r"(?![0-9]|\.[0-9]|\s*(?:mm|cm|%))"
_SEP = r"[ \t]*(?:,[ \t]*(?:and|or)[ \t]+|,|/|-|–|~|〜|\band\b|\bor\b|&|\bto\b)[ \t]*"
# "segment 7", "Couinaud segment VII", "seg. 4b", "segments 2, 3 and 7", "segments VI/VII"
_WORD = re.compile(
    rf"(?<![A-Za-z])(?P<kw>(?:couinaud\s+|hepatic\s+|liver\s+)?(?:segments|segment|segs?\.?))\s*"
    rf"(?P<body>{_NUM}{_NUM_END}(?:{_SEP}(?:segments?\s*|S\s?)?{_NUM}{_NUM_END})*)",
    re.IGNORECASE)
# "S7", "S 7", "S4a", "S5/6", "S5-S6", "SVII" (upper-case S only: "s" is too common in prose)
_LETTER = re.compile(
    rf"(?:(?<![A-Za-z0-9])S|(?<=[^\x00-\x7f])s) ?(?P<body>(?:[1-8](?:[ab](?![a-z]))?|(?:VIII|VII|VI|IV|V|III|II)(?![A-Za-z])){_NUM_END}"
    rf"(?:[ \t]*[/\-–~〜][ \t]*S? ?(?:[1-8][ab]?|VIII|VII|VI|IV|V|III|II){_NUM_END})?)")
_CAUDATE = re.compile(r"caudate(?:\s+lobe)?|尾状葉", re.IGNORECASE)
_SPLIT_NUM = re.compile(r"(?:VIII|VII|VI|IV|V|III|II|I|[1-8])(?:[ab](?![a-z]))?", re.IGNORECASE)

# One lesion across the named segments: "straddling segments 4a and 8", "a single lesion in segments 5 and 6"
_SPANNING_BEFORE = re.compile(
    r"(?:straddl\w*|spann\w*|across|bridg\w*|crossing|involving both|junction of|border of|between|"
    r"\b(?:a|one|single|the)\s+(?:\w+\s+){0,3}?(?:lesion|metastasis|nodule|mass|tumou?r|deposit)\s+(?:\w+\s+){0,2}?"
    r"(?:in|at|of|within|involving|occupying|spanning|straddling|crossing|across))\s*(?:the\s+)?$", re.IGNORECASE)
_SPANNING_AFTER = re.compile(r"^\s*(?:にまたがる|に跨る|にかけて|境界|\(?\s*(?:a\s+)?(?:single\s+lesion|one\s+lesion)|"
                             r"\(?\s*straddl|\(?\s*spanning|\(?\s*crossing)", re.IGNORECASE)
_LUNG_BEFORE = re.compile(r"(?:肺|上葉|中葉|下葉|lung|pulmonary|(?:upper|middle|lower)\s+lobe|\b(?:RUL|RML|RLL|LUL|LLL)\b|"
                          r"lingula\w*)[^.。;,、]{0,12}$", re.IGNORECASE)
_LIVER_NEAR = re.compile(r"肝|liver|hepatic", re.IGNORECASE)
_LUNG_AFTER = re.compile(r"^[^.。;,、]{0,20}(?:of the (?:right|left) (?:lung|upper lobe|lower lobe|middle lobe)|肺)",
                         re.IGNORECASE)
_SACRAL = re.compile(r"(?:L\d\s*[/\-]\s*)$")
_SACRAL_AFTER = re.compile(r"^\s*(?:vertebra|nerve|root|foramen|椎|神経)", re.IGNORECASE)


@dataclass(frozen=True)
class Hit:
    """One segment mention: `lesions` holds one normalised segment per lesion ("7", "4a", "5/6")."""
    start: int
    end: int
    text: str
    lesions: tuple[str, ...]


def arabic(numeral: str) -> str:
    """"VII" -> "7", "IVb" -> "4b", "4A" -> "4a"."""
    sub = ""
    if numeral[-1:] in "abAB" and len(numeral) > 1:
        numeral, sub = numeral[:-1], numeral[-1].lower()
    number = _ROMAN.get(numeral.upper(), numeral)
    return number + sub if number == "4" else number


def _order(segment: str) -> tuple[int, str]:
    return (int(segment[0]), segment[1:])


def join_segments(segments: list[str]) -> str:
    """One lesion across several segments: "6/5" -> "5/6" (lower first)."""
    return "/".join(sorted(dict.fromkeys(segments), key=_order))


def _numbers(body: str) -> tuple[list[str], list[str]]:
    """The segments of a hit's body and the separators between them."""
    parts = re.split(r"(" + _SEP + r")", body, flags=re.IGNORECASE)
    numbers, seps = [], []
    for i, part in enumerate(parts):
        if i % 2:
            seps.append(part.strip().lower())
            continue
        match = _SPLIT_NUM.search(re.sub(r"(?i)^(?:segments?\s*|S\s?)", "", part.strip()))
        if match:
            numbers.append(arabic(match.group(0)))
    return numbers, seps


def find_segments(text: str) -> list[Hit]:
    """All liver-segment hits in `text` (normalised), in text order, lung/sacral look-alikes removed."""
    hits: list[Hit] = []
    taken: list[tuple[int, int]] = []
    for match in _WORD.finditer(text):
        numbers, seps = _numbers(match.group("body"))
        plural = match.group("kw").lower().rstrip(".").endswith(("segments", "segs"))
        if not plural and any(s in (",",) for s in seps):   # "segment 7, 5 mm": not a list
            numbers = numbers[:1]
            end = match.start("body") + len(_SPLIT_NUM.match(match.group("body")).group(0))
        else:
            end = match.end()
        if len(numbers) == 2 and seps and seps[0] in ("/", "-", "–", "~", "〜", "to"):
            lesions = (join_segments(numbers),)
        elif len(numbers) == 2 and (_SPANNING_BEFORE.search(text[max(0, match.start() - 60):match.start()])
                                    or _SPANNING_AFTER.match(text[end:])):
            lesions = (join_segments(numbers),)
        else:
            lesions = tuple(numbers)
        hits.append(Hit(match.start(), end, text[match.start():end], lesions))
        taken.append((match.start(), end))
    for match in _LETTER.finditer(text):
        if any(s <= match.start() < e for s, e in taken):
            continue
        numbers = [arabic(n.group(0)) for n in _SPLIT_NUM.finditer(match.group("body"))]
        lesions = (join_segments(numbers),) if len(numbers) > 1 else tuple(numbers)
        hits.append(Hit(match.start(), match.end(), match.group(0), lesions))
    for match in _CAUDATE.finditer(text):
        hits.append(Hit(match.start(), match.end(), match.group(0), ("1",)))
    hits.sort(key=lambda h: h.start)
    out: list[Hit] = []
    for hit in hits:
        # "Segment 1 (caudate lobe)", "segment VII (S7)": one mention named twice
        if out and out[-1].lesions == hit.lesions and re.fullmatch(r"[^()（）.。;]{0,15}[(（]\s*",
                                                                   text[out[-1].end:hit.start]):
            continue
        out.append(hit)
    return [h for h in out if not _excluded(text, h)]


def _excluded(text: str, hit: Hit) -> bool:
    before, after = text[max(0, hit.start - 30):hit.start], text[hit.end:hit.end + 30]
    lung = _LUNG_BEFORE.search(before)
    if lung and not _LIVER_NEAR.search(before[lung.end():]):
        return True
    if _LUNG_AFTER.search(after):
        return True
    return bool(_SACRAL.search(before) or _SACRAL_AFTER.search(after))


def spanning_after(text: str, hits: list[Hit]) -> list[Hit]:
    """Japanese "S5、S6にまたがる病変" / "S4aとS8にまたがる": merge the listed hits into one lesion."""
    out: list[Hit] = []
    for hit in hits:
        if out and _SPANNING_AFTER.match(text[hit.end:]) and re.fullmatch(r"\s*(?:、|,|と|及び|および|・)\s*",
                                                                          text[out[-1].end:hit.start]):
            prev = out.pop()
            merged = join_segments([s for h in (prev, hit) for les in h.lesions for s in les.split("/")])
            out.append(Hit(prev.start, hit.end, text[prev.start:hit.end], (merged,)))
        else:
            out.append(hit)
    return out
