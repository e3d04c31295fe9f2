"""The rule engine: which finding and size belong to which segment mention.

Rules (ids cited by tests/test_nlp_extract.py):
  E1 groups: segment hits joined only by list words ("S2, S3 and S7", "S2、S3") share their findings
  E2 ownership: a trigger belongs to the group it follows ("the S7 lesion has disappeared"), or to the next
     group when it leads into it ("no residual lesion in S7", "resection of segment 6"); before the first
     group it belongs to the first, after the last to the last. Japanese predicates follow their subject.
  E3 choice: per axis (imaging status; IOUS and handling for operative notes; viability; recurrence) the
     group takes its nearest owned current trigger, else a current trigger elsewhere in the clause, else a
     weak one ("lesion", a bare size); historical triggers are never used (history is not the current status)
  E4 orphans: a clause with findings but no segment continues the last group of its sentence ("not seen on
     IOUS; it was left in place"); in operative and pathology reports also the groups of the previous
     sentence ("Specimen: liver, segment 7." "Metastatic adenocarcinoma, 14 mm."); a line ending in ":" with
     a finding ("Not visible:") heads the lines that follow
  E5 sizes: a size belongs to the hit it follows, or the next one when it leads into it ("a 12 mm lesion in
     S7"); "two lesions in S7 (12 and 8 mm)" gives two lesions
  E6 repeats: the same segment and finding in a later sentence (the impression restating the findings) is
     the same lesion unless its size differs
  E7 follow-up: recurrences per segment; every "no recurrence" statement is one report-level mention with
     no segment; a segment-less recurrence counts only when it is said to be in the liver
  E8 ignored: extra-hepatic and primary-tumour statements without a liver segment; segments naming a
     resection's extent ("left lateral sectionectomy (segments II-III)")
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from etl.nlp import KINDS, context, segments
from etl.nlp.context import Trigger
from etl.nlp.text import Sentence, clauses, normalize, sentences

_CONNECTOR = re.compile(
    r"\s*(?:の?[1-5]\s*(?:個|病変|箇所|か所|ヶ所|つ)(?:の病変)?)?"
    r"\s*(?:lesions?|nodules?|metastas[ie]s|foci|DLMs?)?\s*(?:,|、|・|/|&|\band\b|\bor\b|as well as|と|及び|および|や|"
    r"ならびに|\s)*\s*(?:\b(?:in|at)\b\s+)?(?:(?:a|an|the|another|one|second|further)\s+)?(?:(?:small|further|"
    r"second|residual|other|smaller|larger)\s+)*(?:(?:lesions?|nodules?|metastas[ie]s|focus|foci|DLMs?)\s+)?"
    r"(?:(?:in|at|of|within)\s+)?(?:the\s+)?", re.IGNORECASE)
_LEADS_INTO = re.compile(
    r"^(?:[^,;:.()、。]{0,40}?\b(?:of|in|at|within|involving|including|from|on|to|for|affecting)\s+(?:the\s+|a\s+|an\s+)?"
    r"(?:[\w-]+\s+){0,2}?|\s*(?:(?:the|a|an|known|previously|liver|hepatic|metastatic|small|\w+ly)\s+)*)$",
    re.IGNORECASE)
_LEADS_INTO_JA = re.compile(r"^(?:した|している|された|されている|の|な|していた)?\s*$")
_ITEM_LINE = re.compile(r"^\s*(?:[-*•・]|\d+\s*[).）:]|[（(]\d+[）)]|[^。.]{0,20}?[:：|])")
_EXTENT_AFTER = re.compile(r"\s*(?:\w+\s+)?(?:bi|tri)?(?:segmentectom|sectionectom|hepatectom|区域切除|亜区域切除)",
                           re.IGNORECASE)
_EXTENT_BEFORE = re.compile(r"(?:hepatectom\w*|sectionectom\w*|lobectom\w*|segmentectom\w*|切除術|区域切除)\s*"
                            r"(?:\(|（|of\s+|including\s+)?\s*$", re.IGNORECASE)


@dataclass
class Group:
    hits: list[segments.Hit]
    sentence: Sentence
    findings: dict[str, Trigger] = field(default_factory=dict)       # axis -> chosen trigger
    counts: dict[int, int] = field(default_factory=dict)              # hit index -> lesions named by it
    sizes: dict[int, list[float]] = field(default_factory=dict)

    @property
    def start(self) -> int:
        return self.hits[0].start

    @property
    def end(self) -> int:
        return self.hits[-1].end


@dataclass
class Found:
    """A mention before it becomes an etl.nlp.Mention."""
    segment: str | None
    finding: str
    size_mm: float | None
    offset: int
    end: int
    sentence: Sentence
    modifiers: tuple[str, ...]
    trigger_at: int = 0              # where its finding was said: orders two findings of one lesion
    label: str | None = None         # "Lesion 3, segment VIII" / "lesion 1 (segment II)": the report's number
    item: bool = False               # said on a line of a list ("- S7: ...", "  Lesion 2, segment III: ...")


def run(original: str, kind: str, lang: str) -> list[Found]:
    """All mentions of `original` for a report of `kind` in `lang`, in text order (rules E1-E8)."""
    text = normalize(original)
    all_groups: list[Group] = []
    report_level: list[Found] = []
    heading: list[Trigger] = []        # E4: "Not visible:" heading the lines below
    previous_groups: list[Group] = []
    hits_all = segments.find_segments(text)
    ious_note = kind == "operative" and context.mentions_ious(text)
    if lang == "ja":
        hits_all = segments.spanning_after(text, hits_all)
    ious_heading = False               # "Findings on IOUS:" / 術中超音波所見： heading the lines below
    for sent in sentences(text):
        if sent.line_start and not _ITEM_LINE.match(text[sent.start:sent.end]):
            ious_heading = False           # a heading reaches only the list items below it
        ious_local = ious_note and (ious_heading or context.mentions_ious(text[sent.start:sent.end])
                                    or bool(sent.header and context.mentions_ious(sent.header)))
        hits = [h for h in hits_all if sent.start <= h.start < sent.end and not _extent(text, sent, h, kind)]
        sent_groups: list[Group] = []
        orphans: list[Trigger] = []
        for c_start, c_end in clauses(text, sent.start, sent.end, lang):
            past_clause = bool(re.match(context.LEXICON[lang].HISTORY_CLAUSE, text[c_start:c_end], re.IGNORECASE))
            past = sent.historical or past_clause
            trigs = context.triggers(text, c_start, c_end, kind, lang, sent.historical, ious_note, ious_local,
                                     past_clause)
            c_hits = [h for h in hits if c_start <= h.start < c_end]
            current = [t for t in trigs if not t.historical and not t.weak]
            if not c_hits:
                if kind == "followup":
                    report_level.extend(_report_level(text, sent, c_start, c_end, current, lang))
                if sent_groups:
                    _fill(sent_groups[-1:], current)
                else:
                    orphans.extend(current)
                continue
            groups = [g for g in _groups(text, c_hits, sent) if not _not_metastasis(text, g, c_hits, c_start, c_end, lang)]
            if not groups:
                continue
            trigs = trigs + _size_triggers(text, c_start, c_end, kind, lang, past)
            _choose(groups, trigs, c_start, c_end, text, lang)
            _sizes(text, groups, c_start, c_end, lang)
            _counts(text, groups, c_start, c_end, lang)
            sent_groups.extend(groups)
        if sent_groups:
            if heading:
                _fill(sent_groups, heading)
            previous_groups = sent_groups
            all_groups.extend(sent_groups)
        elif sent.line_start and text[sent.start:sent.end].rstrip().endswith((":", "：")):
            heading = orphans
            ious_heading = ious_note and context.mentions_ious(text[sent.start:sent.end])
        else:
            if orphans and kind in ("operative", "pathology") and previous_groups:
                _fill(previous_groups, orphans, sizes=context.sizes(text, sent.start, sent.end, lang))
            if sent.line_start:
                heading, ious_heading = [], False
    found = [m for g in all_groups for m in _emit(text, g, kind)] + report_level
    found.sort(key=lambda m: (m.offset, m.trigger_at))
    return _merge_repeats(_followup(found) if kind == "followup" else found)


def _size_triggers(text: str, c_start: int, c_end: int, kind: str, lang: str, historical: bool) -> list[Trigger]:
    """A bare current size speaks weakly for presence ("S3: 4 mm" on imaging is a visible lesion)."""
    finding = context.size_finding(kind, lang)
    if finding is None or historical:
        return []
    return [Trigger(s.start, s.end, finding, True, text[s.start:s.end])
            for s in context.sizes(text, c_start, c_end, lang) if not s.historical]


def _extent(text: str, sent: Sentence, hit: segments.Hit, kind: str) -> bool:
    """E8: in an operative note, segments of the procedure line or of a resection's extent are not lesions."""
    if kind != "operative":
        return False
    multi = len(hit.lesions) > 1 or "/" in hit.lesions[0] or hit.text.lower().startswith("segments")
    return multi and bool(_EXTENT_BEFORE.search(text[max(sent.start, hit.start - 40):hit.start])
                          or _EXTENT_AFTER.match(text[hit.end:sent.end]))


def _groups(text: str, hits: list[segments.Hit], sent: Sentence) -> list[Group]:
    """E1: hits joined only by list words form one group."""
    groups: list[Group] = []
    for hit in hits:
        if groups and _CONNECTOR.fullmatch(text[groups[-1].end:hit.start]):
            groups[-1].hits.append(hit)
        else:
            groups.append(Group([hit], sent))
    return groups


_METASTASIS = re.compile(r"metasta|CRLM|DLM|転移|腫瘍|癌", re.IGNORECASE)


def _not_metastasis(text: str, group: Group, hits: list, c_start: int, c_end: int, lang: str) -> bool:
    """E8: "small cyst in segment 3", S3の嚢胞: a finding named as something other than a metastasis."""
    before = max([h.end for h in hits if h.end <= group.start], default=c_start)
    after = min([h.start for h in hits if h.start >= group.end], default=c_end)
    region = text[before:after]
    return bool(re.search(context.LEXICON[lang].NOT_METASTASIS, region, re.IGNORECASE)) and \
        not _METASTASIS.search(region)


def _owner(text: str, groups: list[Group], trig: Trigger, lang: str) -> int:
    """E2: the index of the group a trigger speaks about."""
    for i, group in enumerate(groups):
        if trig.end <= group.start:
            if i == 0:
                return 0
            leads = _LEADS_INTO_JA if lang == "ja" else _LEADS_INTO
            return i if leads.match(text[trig.end:group.start]) else i - 1
        if trig.start < group.end:       # inside the group's span (e.g. "S7 DLM")
            return i
    return len(groups) - 1


def _choose(groups: list[Group], trigs: list[Trigger], c_start: int, c_end: int, text: str, lang: str) -> None:
    """E3: per group and axis, the nearest owned current trigger, else one elsewhere in the clause, else weak."""
    owned: dict[int, list[Trigger]] = {i: [] for i in range(len(groups))}
    for trig in trigs:
        owned[_owner(text, groups, trig, lang)].append(trig)
    current = [t for t in trigs if not t.historical]
    for i, group in enumerate(groups):
        def distance(t: Trigger) -> int:
            return max(group.start - t.end, t.start - group.end, 0)
        axes = {t.axis for t in current}
        for axis in axes:
            tiers = ([t for t in owned[i] if not t.historical and not t.weak and t.axis == axis],
                     [t for t in current if not t.weak and t.axis == axis and _unclaimed(t, owned, i, groups)],
                     [t for t in owned[i] if not t.historical and t.weak and t.axis == axis])
            for tier in tiers:
                if tier:
                    group.findings[axis] = min(tier, key=distance)
                    break


def _unclaimed(trig: Trigger, owned: dict[int, list[Trigger]], me: int, groups: list[Group]) -> bool:
    """A trigger owned by another group may be borrowed only if that group has another for the same axis."""
    for j, trigs in owned.items():
        if j != me and trig in trigs:
            return any(t is not trig and t.axis == trig.axis and not t.weak and not t.historical for t in trigs)
    return True


def _fill(groups: list[Group], trigs: list[Trigger], sizes: list | None = None) -> None:
    """E4: give groups without a finding on an axis the first current trigger of that axis."""
    for trig in trigs:
        for group in groups:
            had = group.findings.get(trig.axis)
            # "not clearly seen; however, a small residual lesion cannot be excluded": the hedged presence wins
            if had and (had.weak or (had.finding in _ABSENT and trig.hedged and trig.finding not in _ABSENT)):
                group.findings[trig.axis] = trig
            if trig.axis not in group.findings:
                group.findings[trig.axis] = trig
                current = [s.mm for s in sizes or [] if not s.historical]
                if current and len(group.hits) == 1 and not group.sizes.get(0):
                    group.sizes[0] = current[:1]


def _sizes(text: str, groups: list[Group], c_start: int, c_end: int, lang: str) -> None:
    """E5: each size to the hit it follows (or leads into)."""
    hits = [(gi, hi, h) for gi, g in enumerate(groups) for hi, h in enumerate(g.hits)]
    for size in context.sizes(text, c_start, c_end, lang):
        if size.historical:
            continue
        owner = None
        for k, (_, _, hit) in enumerate(hits):
            if size.end <= hit.start:
                if k == 0:
                    owner = 0
                elif lang != "ja" and _LEADS_INTO.match(text[size.end:hit.start]) and \
                        not re.search(r"[,;:]", text[size.end:hit.start]):
                    owner = k
                else:
                    owner = k - 1
                break
            if size.start < hit.end:
                owner = k
                break
        if owner is None:
            owner = len(hits) - 1
        gi, hi, _ = hits[owner]
        groups[gi].sizes.setdefault(hi, []).append(size.mm)


def _counts(text: str, groups: list[Group], c_start: int, c_end: int, lang: str) -> None:
    """E5: "two lesions in segment 7" / "S7に2個" name two lesions."""
    lex = context.LEXICON[lang]
    for group in groups:
        for hi, hit in enumerate(group.hits):
            if len(hit.lesions) != 1:
                continue
            if lang == "ja":
                match = re.match(lex.COUNT_AFTER, text[hit.end:c_end])
            else:
                match = re.search(lex.COUNT_BEFORE, text[max(c_start, hit.start - 60):hit.start], re.IGNORECASE)
            if match:
                group.counts[hi] = lex.COUNT[match.group("n").lower()]


_FINDINGS = {f for findings in KINDS.values() for f in findings}
_NO_SIZE = {"not_visible", "no_recurrence"}
_ABSENT = {"not_visible", "not_found_on_ious", "no_viable_tumor", "no_recurrence"}


def _emit(text: str, group: Group, kind: str) -> list[Found]:
    out = []
    for axis, trig in group.findings.items():
        if trig.finding not in _FINDINGS:          # "not assessable": said, but no finding
            continue
        modifiers = tuple(name for name, on in (("negated", trig.negated), ("hedged", trig.hedged),
                                                ("historical", group.sentence.historical)) if on)
        for hi, hit in enumerate(group.hits):
            sizes = group.sizes.get(hi, [])
            lesions = list(hit.lesions) * group.counts.get(hi, 1)
            for li, segment in enumerate(lesions):
                if len(lesions) == 1:
                    size = sizes[0] if sizes else None
                else:
                    size = sizes[li] if len(sizes) == len(lesions) else None
                if trig.finding in _NO_SIZE:
                    size = None
                out.append(Found(segment, trig.finding, size, hit.start, hit.end, group.sentence, modifiers,
                                 trig.start, _label(text, group.sentence, hit), _is_item(text, group.sentence)))
    return out


def _report_level(text: str, sent: Sentence, c_start: int, c_end: int, trigs: list[Trigger],
                  lang: str) -> list[Found]:
    """E7: a follow-up statement without a segment ("No evidence of recurrence.", 肝再発を認めない)."""
    lex = context.LEXICON[lang]
    clause = text[c_start:c_end]
    extra = re.search(lex.EXTRAHEPATIC, clause, re.IGNORECASE)
    liver = re.search(lex.LIVER, clause, re.IGNORECASE)
    out = []
    for trig in trigs:
        if trig.finding == "recurrence" and (not liver or (extra and extra.start() < liver.start())):
            continue
        if trig.finding == "no_recurrence" and extra and not liver:
            continue
        modifiers = tuple(n for n, on in (("negated", trig.negated), ("hedged", trig.hedged)) if on)
        out.append(Found(None, trig.finding, None, trig.start, trig.end, sent, modifiers))
        break
    return out


def _followup(found: list[Found]) -> list[Found]:
    """E7: one report-level no_recurrence (segment None) stands for every "no recurrence" statement."""
    out, said_none = [], False
    for m in found:
        if m.finding == "no_recurrence":
            if not said_none:
                out.append(Found(None, m.finding, None, m.offset, m.end, m.sentence, m.modifiers))
                said_none = True
            continue
        out.append(m)
    # "Elsewhere no new lesions" next to a recurrence is not a report of no recurrence
    recurrences = [m for m in out if m.finding == "recurrence"]
    return [m for m in out if not (m.segment is None and recurrences and (
        m.finding == "no_recurrence" or (m.finding == "recurrence" and any(r.segment for r in recurrences))))]


_LABEL = re.compile(r"(?:\b(?:lesion|nodule|metastasis|no\.?)\s*|#|病変|(?:^|[,、]\s*))(?P<n>\d{1,2})\s*[,:：(（]?\s*$",
                    re.IGNORECASE)


def _label(text: str, sent: Sentence, hit: segments.Hit) -> str | None:
    match = _LABEL.search(text[max(sent.start, hit.start - 20):hit.start])
    return match.group("n") if match else None


_LIST_ITEM = re.compile(r"^(?:[ \t]+\S|\s*(?:[-*•・]|\d+\s*[.)）]|[（(]\d+[）)]))|^\s*(?:肝)?(?:S\s?[1-8]|segment|seg\.?|"
                        r"lesion|病変)[^:：。.]{0,25}[:：]", re.IGNORECASE)


def _is_item(text: str, sent: Sentence) -> bool:
    return sent.line_start and bool(_LIST_ITEM.match(text[sent.start:sent.end]))


def _same_lesion(earlier: Found, later: Found) -> bool:
    """E6: may `later` restate `earlier`? Numbered lesions must share their number; two lines of one list
    (one section, each its own line) are two lesions."""
    if earlier.sentence == later.sentence:
        return False
    if earlier.label and later.label:
        return earlier.label == later.label
    if earlier.item and later.item and earlier.sentence.header == later.sentence.header:
        return False
    return earlier.size_mm is None or later.size_mm is None or earlier.size_mm == later.size_mm


def _merge_repeats(found: list[Found]) -> list[Found]:
    """E6: a later sentence restating a lesion's finding is the same lesion (its size fills a gap)."""
    out: list[Found] = []
    claimed: dict[int, int] = {}          # id of an earlier mention -> start of the sentence that restated it
    for m in found:
        same = [o for o in out if o.segment == m.segment and o.finding == m.finding
                and claimed.get(id(o)) != m.sentence.start and _same_lesion(o, m)]
        if same:
            claimed[id(same[0])] = m.sentence.start
            if same[0].size_mm is None and m.size_mm is not None:
                same[0].size_mm = m.size_mm
            continue
        out.append(m)
    return out
