"""Untrusted input (issue 10): malformed and hostile FHIR never crashes a run, and every line read is
accounted for (README "Accounting, quarantine and privacy").

Hypothesis starts from a valid synthetic cohort (etl.synth) and mutates it: a value replaced by one of a
wrong type, 1 MB strings, 150-250 levels of nested arrays, objects or extensions (and 600-50 000 levels of
nested arrays, beyond the interpreter's recursion limit), invalid dates
(2021-02-30, "yesterday", 99999-01-01) and valid but odd ones (0001-01-01, 9999-12-31, a bare year),
unknown or unused resource types (also in a file named for no type), duplicate ids with different
content, references to missing patients or to the wrong type, non-UTF-8 bytes, truncated JSON, blank
lines, byte-order marks, JSON that is not an object, extreme numbers, NUL, control and bidi characters,
duplicate keys, dropped fields and CRLF line ends. The result is written as NDJSON and read by the file
source.

Properties:
- F1 staging raises nothing; `resources_read` equals the number of lines written that hold anything but
  ASCII white space (FileSource skips blank lines and counts every other line, whatever its bytes), and
  equals loaded + quarantined + excluded;
- F2 each quarantined line has one dlm_quarantine row with its file:line and a reason; every line that is
  not UTF-8, not JSON, not a JSON object, has no resourceType or id, or holds another type than its
  file's, is quarantined;
- F3 a whole run (stage, map, derive, checks, analysis, report) raises nothing but RunFailed (a critical
  check failed: nothing published); results.json and dlm_run hold the accounting of F1 either way, and
  neither report.html nor dashboard.html carries a script tag.

Examples are derandomized, so CI is reproducible. Default suite: F1-F2 on 40 generated inputs and on the
every-kind input (`EVERY_KIND`, on SQLite and PostgreSQL), F3 on 3 generated inputs plus the every-kind
one, on SQLite. `-m slow`: F1-F2 on 400 and F3 on 25 other generated inputs, and F3 for the every-kind
input on PostgreSQL. Defects found in code this suite does not own are single cases marked
xfail(strict=True): once fixed they XPASS, which fails, and the xfail mark goes.
"""
from __future__ import annotations

import base64
import gzip
import json
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from etl.extract import ExtractError, FileSource
from etl.pipeline import RunFailed, RunSettings, run
from etl.registry import open_registry
from etl.stage import FIRST_PASS, stage_source
from etl.stage.pseudonym import Pseudonymizer
from etl.transform import SUPPORTED_TYPES
from etl.vocabulary import load_code_map

TYPED = ("Patient", "Condition", "BodyStructure", "DiagnosticReport", "Observation", "Procedure",
         "MedicationAdministration", "DocumentReference")
MISC = "misc.ndjson"   # named for no resource type: any resource may be in it
FILES = [f"{t}.ndjson" for t in TYPED] + [MISC]
MB = 1 << 20
BASE_PATIENTS, BASE_SEED = 6, 3   # a cohort that publishes cleanly before it is mutated

COMMON = dict(deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
# A whole run takes seconds: no shrinking (a failure prints its input, which is small: a list of mutations).
RUN_PHASES = [Phase.explicit, Phase.generate]

# ---------------------------------------------------------------------------------------------------------
# The corpus: the cohort's files as lines, and the mutations.

WRONG_VALUES = [0, -1, 3.5, True, False, None, "", "text", [], {}, [1, "a", None], {"x": {"y": []}}, ["Patient/1"]]
INVALID_DATES = ["2021-02-30", "2021-02-29", "2021-13-01", "2021-00-10", "yesterday", "99999-01-01", "", "2021-1-1",
                 "20210101", "2021/02/03", "0000-00-00", "2021-02-28T25:00:00Z", "2021-02-28T10:00:00",
                 "-2021-01-01", "2021-02-28 10:00", "NaN", "\u0662\u0660\u0662\u0661-01-01", 20210101]
ODD_DATES = ["0001-01-01", "1677-09-21", "1800-01-01", "2262-04-12", "9999-12-31", "1900", "2021", "2021-02",
             "2021-02-28T23:59:59+14:00", "2021-02-28T00:00:00-12:00", "2021-02-28T12:00:00.123456789Z",
             "1970-01-01T00:00:00Z", "2100-02-28"]
DATE_KEYS = {"birthDate", "deceasedDateTime", "onsetDateTime", "abatementDateTime", "recordedDate",
             "effectiveDateTime", "issued", "date", "start", "end", "performedDateTime", "lastUpdated"}
RESOURCE_TYPES = ["Foo", "", " Observation", "observation", "Encounter", "Bundle", "OperationOutcome", "Patient",
                  "Observation", "Condition", "<script>alert(1)</script>", "x" * 300, 42, None, [], {}]
REFERENCES = ["Patient/does-not-exist", "Patient/", "Patient", "", "Device/1", "Group/7", "#p1",
              "urn:uuid:6f1c5b3e-8d3e-4a8b-9d67-2f3c1b0a9e11", "Patient/{owner}/_history/2",
              "http://elsewhere.example/fhir/Patient/{owner}", "Patient/{other}", "BodyStructure/{owner}",
              "patient/{owner}", "Patient/{owner}/extra", "Observation/missing", 42, None, [], {"display": "x"}]
BAD_BYTES = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80",
             b"\x80"]
NOT_OBJECTS = [b"[]", b"null", b"42", b'"Patient"', b"true", b"{}", b"[{LINE}]", b'{"resourceType": "Observation"}',
               b'{"resourceType": "Patient", "id": ""}', b"\x00", b"{\"a\": 1} {\"b\": 2}", b"NaN"]
NUMBERS = [1e308, -1e308, 1e-320, -0.0, 10 ** 30, 10 ** 400, float("nan"), float("inf"), 0.1 + 0.2, 2 ** 63, -2 ** 63 - 1]
STRANGE_TEXT = ["a\u0000b", "\u2028\u2029", "\u202eevil", "\U0001f600" * 10, "<script>alert(1)</script>",
                "'; DROP TABLE person; --", "%s%n%x", "\\", "\x1b[31m", "\ufeff", "\t\n\r", " ", "\u6f22\u5b57",
                "\x7f\x01\x02", "e\u0301" * 50]
BLANKS = [b"", b" ", b"\t", b"\r", b"  \t \r", b"\x0b\x0c"]
HUGE_CHARS = ["x", "\u00e9", "\u6f22", "<", "\u2028", "9"]


def _dump(resource, ascii_only: bool = False) -> bytes:
    return json.dumps(resource, ensure_ascii=ascii_only, separators=(",", ":")).encode("utf-8")


def _loads(line: bytes) -> dict | None:
    """The JSON object a line holds, read as the file source reads it (strict UTF-8), else None."""
    try:
        resource = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return resource if isinstance(resource, dict) else None


def _paths(node, prefix=()):
    """Every (key or index) path below `node`, parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _get(node, path):
    for key in path:
        node = node[key]
    return node


def _set(node, path, value):
    _get(node, path[:-1])[path[-1]] = value


def _nested(depth: int, shape: str):
    if shape == "extension":
        node = {"url": "http://example.org/deep", "valueString": "bottom"}
        for _ in range(depth):
            node = {"url": "http://example.org/deep", "extension": [node]}
        return [node]
    node = "bottom"
    for level in range(depth):
        node = [node] if shape == "array" or (shape == "mixed" and level % 2) else {"k": node}
    return node


def _owner(resource: dict) -> str:
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id"))
    for key in ("subject", "patient"):
        reference = resource.get(key)
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            return reference["reference"].rsplit("/", 1)[-1]
    return "unknown"


@dataclass
class Expected:
    """What the written files promise: the lines read (by file:line) and those that must be quarantined."""

    locations: set[str] = field(default_factory=set)
    must_quarantine: set[str] = field(default_factory=set)

    @property
    def lines(self) -> int:
        return len(self.locations)


def _must_quarantine(line: bytes, file_type: str | None) -> bool:
    """A line no loader could take: not UTF-8, not a JSON object, no resourceType or id, or the wrong type."""
    try:
        resource = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return True
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return True
    if not resource["resourceType"] or (file_type and resource["resourceType"] != file_type):
        return True
    return not isinstance(resource.get("id"), str) or not resource["id"]


class Corpus:
    """The cohort's NDJSON files as lines (bytes without the newline), mutated in place."""

    def __init__(self, files: dict[str, list[bytes]]):
        self.files = {name: list(lines) for name, lines in files.items()}

    @classmethod
    def read(cls, directory: Path) -> Corpus:
        files = {name: (directory / name).read_bytes().splitlines() for name in FILES[:-1]}
        return cls({**files, MISC: []})

    def pick(self, target: tuple[int, int]) -> tuple[str, int]:
        """The line a mutation aims at: a file (an empty one passes to the next), then a line in it."""
        file_choice, line_choice = target
        for step in range(len(FILES)):
            name = FILES[(file_choice + step) % len(FILES)]
            if self.files[name]:
                return name, line_choice % len(self.files[name])
        raise AssertionError("no lines left")

    def resource(self, target) -> tuple[str, int, dict] | None:
        name, index = self.pick(target)
        resource = _loads(self.files[name][index])
        return None if resource is None else (name, index, resource)

    def edit(self, target, change, ascii_only: bool = False) -> None:
        """Apply change(resource) to the chosen line's JSON; a line that is no JSON object is left alone."""
        found = self.resource(target)
        if found is not None:
            name, index, resource = found
            change(resource)
            self.files[name][index] = _dump(resource, ascii_only)

    def other_patient(self, choice: int) -> str:
        ids = [str(patient.get("id")) for patient in map(_loads, self.files[FILES[0]]) if patient is not None]
        return ids[choice % len(ids)] if ids else "none"

    def write(self, directory: Path) -> Expected:
        directory.mkdir(parents=True, exist_ok=True)
        expected = Expected()
        for name, lines in self.files.items():
            (directory / name).write_bytes(b"".join(line + b"\n" for line in lines))
            file_type = name.removesuffix(".ndjson") if name != MISC else None
            for number, line in enumerate(lines, start=1):
                assert b"\n" not in line
                if line.strip():
                    expected.locations.add(f"{name}:{number}")
                    if _must_quarantine(line, file_type):
                        expected.must_quarantine.add(f"{name}:{number}")
        return expected


# Each mutation is a tuple (kind, target, *parameters); `target` = (file choice, line choice).

def _wrong_type(corpus, target, path_choice, value):
    def change(resource):
        paths = list(_paths(resource))
        _set(resource, paths[path_choice % len(paths)], value)
    corpus.edit(target, change)


def _huge_string(corpus, target, path_choice, char):
    def change(resource):
        if resource.get("resourceType") == "DocumentReference" and path_choice % 3 == 0:
            # a 1 MB report text, properly encoded, reaches text extraction
            text = ("Lesion 1, segment II: not identified on CT. " * (MB // 44 + 1))[:MB]
            resource["content"] = [{"attachment": {"contentType": "text/plain",
                                                   "data": base64.b64encode(text.encode()).decode()}}]
            return
        strings = [p for p in _paths(resource) if isinstance(_get(resource, p), str)]
        if strings:
            _set(resource, strings[path_choice % len(strings)], char * MB)
    corpus.edit(target, change)


def _deep(corpus, target, depth, shape, path_choice):
    def change(resource):
        if shape == "extension":
            resource["extension"] = _nested(depth, shape)
        else:
            paths = list(_paths(resource))
            _set(resource, paths[path_choice % len(paths)], _nested(depth, shape))
    corpus.edit(target, change)


def _date(corpus, target, value, path_choice):
    def change(resource):
        dates = [p for p in _paths(resource) if isinstance(p[-1], str) and p[-1] in DATE_KEYS]
        if dates:
            _set(resource, dates[path_choice % len(dates)], value)
    corpus.edit(target, change)


def _resource_type(corpus, target, value, to_misc):
    name, index = corpus.pick(target)
    corpus.edit(target, lambda resource: resource.__setitem__("resourceType", value))
    if to_misc:
        corpus.files[MISC].append(corpus.files[name].pop(index))


def _duplicate_id(corpus, target, path_choice, last_updated, place):
    found = corpus.resource(target)
    if found is None:
        return
    name, index, resource = found
    leaves = [p for p in _paths(resource) if not isinstance(_get(resource, p), (dict, list)) and p != ("id",)
              and p != ("resourceType",)]
    if leaves:
        path = leaves[path_choice % len(leaves)]
        value = _get(resource, path)
        _set(resource, path, (not value) if isinstance(value, bool) else
             value + 1 if isinstance(value, (int, float)) else f"{value}-changed")
    if last_updated == "same":
        last_updated = (resource.get("meta") or {}).get("lastUpdated")
    if last_updated is not None:
        resource["meta"] = {**(resource.get("meta") or {}), "lastUpdated": last_updated}
    into = MISC if place == "misc" else name
    lines = corpus.files[into]
    lines.insert(path_choice % (len(lines) + 1), _dump(resource))


def _reference(corpus, target, value, other_choice, any_reference):
    found = corpus.resource(target)
    if found is None:
        return
    owner, other = _owner(found[2]), corpus.other_patient(other_choice)
    if isinstance(value, str):
        value = value.format(owner=owner, other=other)

    def change(resource):
        references = [p for p in _paths(resource) if p[-1] == "reference"]
        if not any_reference:
            references = [p for p in references if p[0] in ("subject", "patient")] or references
        if references:
            _set(resource, references[other_choice % len(references)], value)
        else:
            resource["subject"] = {"reference": value}
    corpus.edit(target, change)


def _non_utf8(corpus, target, style, position, payload):
    name, index = corpus.pick(target)
    line = corpus.files[name][index]
    if style == "insert":
        cut = position % (len(line) + 1)
        corpus.files[name][index] = line[:cut] + payload + line[cut:]
    elif style == "latin-1":
        text = line.decode("utf-8", "replace")
        cut = position % (len(text) + 1)
        corpus.files[name][index] = (text[:cut] + "\u00e9" + text[cut:]).encode("latin-1", "replace")
    else:   # raw bytes instead of the line
        corpus.files[name][index] = payload.replace(b"\n", b"")


def _truncate(corpus, target, fraction):
    name, index = corpus.pick(target)
    line = corpus.files[name][index]
    corpus.files[name][index] = line[:max(1, min(len(line) - 1, int(len(line) * fraction)))]


def _blank(corpus, target, content):
    name, index = corpus.pick(target)
    corpus.files[name].insert(index, content)


def _very_deep(corpus, target, depth):
    """Nesting beyond the interpreter's recursion limit, added as text (the helpers here cannot parse it)."""
    name, index = corpus.pick(target)
    line = corpus.files[name][index]
    if line.startswith(b"{") and line.endswith(b"}"):
        corpus.files[name][index] = line[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"


def _bom(corpus, target):
    name, index = corpus.pick(target)
    corpus.files[name][index] = b"\xef\xbb\xbf" + corpus.files[name][index]


def _not_object(corpus, target, value):
    name, index = corpus.pick(target)
    corpus.files[name][index] = value.replace(b"{LINE}", corpus.files[name][index])


def _number(corpus, target, value, path_choice):
    def change(resource):
        numbers = [p for p in _paths(resource) if type(_get(resource, p)) in (int, float)]
        leaves = numbers or [p for p in _paths(resource) if not isinstance(_get(resource, p), (dict, list))]
        if leaves:
            _set(resource, leaves[path_choice % len(leaves)], value)
    corpus.edit(target, change)


def _strange_text(corpus, target, value, path_choice):
    def change(resource):
        strings = [p for p in _paths(resource) if isinstance(_get(resource, p), str)]
        if strings:
            _set(resource, strings[path_choice % len(strings)], value)
    corpus.edit(target, change)


def _drop_field(corpus, target, path_choice):
    def change(resource):
        paths = list(_paths(resource))
        if paths:
            path = paths[path_choice % len(paths)]
            del _get(resource, path[:-1])[path[-1]]
    corpus.edit(target, change)


def _crlf(corpus, target):
    name, index = corpus.pick(target)
    corpus.files[name][index] += b"\r"


def _duplicate_key(corpus, target, at_end):
    name, index = corpus.pick(target)
    line = corpus.files[name][index]
    if line.startswith(b"{") and line.endswith(b"}") and len(line) > 2:
        corpus.files[name][index] = (line[:-1] + b',"id":"shadow-id"}') if at_end else (b'{"id":"shadow-id",' + line[1:])


APPLY = {"wrong_type": _wrong_type, "huge_string": _huge_string, "deep": _deep, "very_deep": _very_deep, "invalid_date": _date,
         "odd_date": _date, "resource_type": _resource_type, "duplicate_id": _duplicate_id, "reference": _reference,
         "non_utf8": _non_utf8, "truncate": _truncate, "blank": _blank, "bom": _bom, "not_object": _not_object,
         "number": _number, "strange_text": _strange_text, "drop_field": _drop_field, "crlf": _crlf,
         "duplicate_key": _duplicate_key}


def mutate(corpus: Corpus, mutations) -> Corpus:
    for kind, target, *parameters in mutations:
        APPLY[kind](corpus, target, *parameters)
    return corpus


_target = st.tuples(st.integers(0, len(FILES) - 1), st.integers(0, 10 ** 6))
_choice = st.integers(0, 10 ** 4)
MUTATION = st.one_of(
    st.tuples(st.just("wrong_type"), _target, _choice, st.sampled_from(WRONG_VALUES)),
    st.tuples(st.just("huge_string"), _target, _choice, st.sampled_from(HUGE_CHARS)),
    st.tuples(st.just("deep"), _target, st.integers(150, 250), st.sampled_from(["array", "object", "mixed", "extension"]),
              _choice),
    st.tuples(st.just("very_deep"), _target, st.sampled_from([600, 1_000, 5_000, 50_000])),
    st.tuples(st.just("invalid_date"), _target, st.sampled_from(INVALID_DATES), _choice),
    st.tuples(st.just("odd_date"), _target, st.sampled_from(ODD_DATES), _choice),
    st.tuples(st.just("resource_type"), _target, st.sampled_from(RESOURCE_TYPES), st.booleans()),
    st.tuples(st.just("duplicate_id"), _target, _choice,
              st.sampled_from([None, "same", "1999-01-01T00:00:00Z", "2030-01-01T00:00:00Z", "not a date"]),
              st.sampled_from(["same file", "misc"])),
    st.tuples(st.just("reference"), _target, st.sampled_from(REFERENCES), _choice, st.booleans()),
    st.tuples(st.just("non_utf8"), _target, st.sampled_from(["insert", "latin-1", "raw"]), _choice,
              st.one_of(st.sampled_from(BAD_BYTES), st.binary(min_size=1, max_size=64))),
    st.tuples(st.just("truncate"), _target, st.floats(0.0, 1.0)),
    st.tuples(st.just("blank"), _target, st.sampled_from(BLANKS)),
    st.tuples(st.just("bom"), _target),
    st.tuples(st.just("not_object"), _target, st.sampled_from(NOT_OBJECTS)),
    st.tuples(st.just("number"), _target, st.sampled_from(NUMBERS), _choice),
    st.tuples(st.just("strange_text"), _target, st.sampled_from(STRANGE_TEXT), _choice),
    st.tuples(st.just("drop_field"), _target, _choice),
    st.tuples(st.just("crlf"), _target),
    st.tuples(st.just("duplicate_key"), _target, st.booleans()),
)

# One of every kind (and the nastiest variants) at once: an explicit example of every property.
EVERY_KIND = [
    # Patients 0 and 1 are broken (so are their resources, quarantined as references to a patient not in the
    # source); patients 2-5 stay in with odd but valid content.
    ("wrong_type", (0, 0), 7, {"x": {"y": []}}),
    ("bom", (0, 0)),
    ("invalid_date", (0, 1), "yesterday", 0),                  # a birth date
    ("truncate", (0, 1), 0.1),
    ("drop_field", (0, 0), 0),
    ("odd_date", (0, 2), "1900", 0),                           # a birth year only
    ("duplicate_id", (0, 3), 2, "2030-01-01T00:00:00Z", "misc"),   # a newer copy of a Patient
    ("wrong_type", (4, 3), 1, 42),                             # an Observation's id
    ("huge_string", (2, 1), 6, "\u6f22"),                      # 1 MB (3 MB of UTF-8): a lesion's description
    ("huge_string", (7, 2), 0, "x"),                           # a 1 MB report text
    ("huge_string", (4, 10), 1, "9"),                          # a 1 MB id
    ("deep", (4, 11), 250, "mixed", 5),
    ("deep", (5, 2), 200, "extension", 0),                     # valid FHIR: 200 nested extensions
    ("very_deep", (4, 12), 50_000),
    ("invalid_date", (4, 20), "2021-02-30", 0),
    ("invalid_date", (5, 3), "99999-01-01", 0),
    ("odd_date", (4, 21), "9999-12-31", 0),
    ("odd_date", (4, 22), "0001-01-01", 0),
    ("odd_date", (6, 0), "2021-02", 1),
    ("resource_type", (4, 30), "Foo", False),
    ("resource_type", (4, 31), "Encounter", True),             # a type the registry does not use
    ("resource_type", (4, 32), "<script>alert(1)</script>", True),
    ("resource_type", (4, 34), [], True),
    ("duplicate_id", (4, 40), 5, None, "same file"),
    ("duplicate_id", (1, 2), 1, "same", "same file"),
    ("reference", (4, 41), "Patient/does-not-exist", 0, False),
    ("reference", (4, 42), "Device/1", 0, False),
    ("reference", (3, 1), "Patient/{other}", 1, False),        # a report moved to another patient
    ("reference", (4, 43), "Observation/missing", 2, True),
    ("reference", (1, 0), None, 0, False),
    ("non_utf8", (4, 50), "insert", 10, b"\xff"),
    ("non_utf8", (5, 1), "latin-1", 40, b""),
    ("non_utf8", (1, 3), "raw", 0, b"\x00\x9f\x92\x96 binary"),
    ("truncate", (4, 51), 0.5),
    ("blank", (4, 52), b""),
    ("blank", (2, 0), b"  \t \r"),
    ("bom", (4, 53)),
    ("not_object", (4, 54), b"[{LINE}]"),
    ("not_object", (4, 55), b"null"),
    ("not_object", (8, 0), b"{}"),
    ("number", (4, 56), float("nan"), 0),
    ("number", (4, 57), 10 ** 400, 0),
    ("number", (4, 58), 1e308, 0),
    ("strange_text", (4, 59), "a\u0000b", 4),
    ("strange_text", (3, 2), "<script>alert(1)</script>", 3),
    ("strange_text", (2, 3), "\u202eevil", 2),
    ("drop_field", (4, 60), 3),
    ("crlf", (4, 61)),
    ("duplicate_key", (4, 62), True),
    ("duplicate_key", (4, 63), False),
]
# resourceTypes longer than dlm_quarantine.resource_type (64): PostgreSQL refuses them (an open defect, below)
LONG_TYPES = [("huge_string", (4, 9), 0, "x"), ("huge_string", (2, 4), 0, "\u6f22"),
              ("resource_type", (4, 33), "x" * 300, False)]
EVERY_KIND += LONG_TYPES

# ---------------------------------------------------------------------------------------------------------
# Running and checking.

CODES = load_code_map()


@pytest.fixture(scope="module")
def base(cohort_factory) -> Corpus:
    return Corpus.read(cohort_factory(BASE_PATIENTS, BASE_SEED))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _quarantine_rows(registry, run_id: str) -> list:
    q = registry.tables["dlm_quarantine"]
    with registry.engine.connect() as conn:
        return conn.execute(sa.select(q.c.location, q.c.reason).where(q.c.run_id == run_id)).all()


def check_quarantine(rows, quarantined: int, expected: Expected) -> None:
    """F2: one row per quarantined line, each with its location and a reason; unreadable lines among them."""
    locations = [location for location, _ in rows]
    assert len(rows) == quarantined
    assert len(set(locations)) == len(locations), "a line quarantined twice"
    assert set(locations) <= expected.locations
    assert all(isinstance(reason, str) and reason.strip() for _, reason in rows)
    assert expected.must_quarantine <= set(locations), sorted(expected.must_quarantine - set(locations))[:5]


def stage_and_check(corpus: Corpus, directory: Path, url: str) -> dict:
    """F1 and F2 on the staging step alone (no mapping or checks): cheap enough for many examples."""
    expected = corpus.write(directory / "source")
    registry = open_registry(url)
    run_id = str(uuid.uuid4())
    try:
        accounting = stage_source(registry.engine, registry.tables, FileSource(directory / "source"), CODES,
                                  Pseudonymizer(), run_id, SUPPORTED_TYPES, show_progress=False)
        counts = accounting.as_dict()
        assert counts["resources_read"] == expected.lines
        assert counts["resources_read"] == counts["loaded"] + counts["quarantined"] + counts["excluded"]
        check_quarantine(_quarantine_rows(registry, run_id), counts["quarantined"], expected)
    finally:
        registry.engine.dispose()
    return counts


def run_and_check(corpus: Corpus, directory: Path, url: str | None = None) -> dict:
    """F3: a whole run on a fresh registry (default: SQLite)."""
    expected = corpus.write(directory / "source")
    out, url = directory / "out", url or f"sqlite:///{directory / 'registry.sqlite'}"
    try:
        run(RunSettings(source=str(directory / "source"), registry_url=url, out_dir=out, show_progress=False))
        failed = False
    except RunFailed:
        failed = True
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    counts = results["run"]
    assert counts["resources_read"] == expected.lines
    assert counts["resources_read"] == counts["loaded"] + counts["quarantined"] + counts["excluded"]
    assert counts["status"] == ("failed" if failed else "published")
    assert results["quality"]["publishable"] is not failed
    registry = open_registry(url)
    try:
        t = registry.tables["dlm_run"]
        with registry.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.run_id == counts["run_id"])).mappings().one()
        assert {k: row[k] for k in ("status", "resources_read", "loaded", "quarantined", "excluded")} == \
            {k: counts[k] for k in ("status", "resources_read", "loaded", "quarantined", "excluded")}
        check_quarantine(_quarantine_rows(registry, counts["run_id"]), counts["quarantined"], expected)
    finally:
        registry.engine.dispose()
    assert (out / "dashboard.html").exists()
    for page in ("report.html", "dashboard.html"):
        if (out / page).exists():
            assert "<script" not in (out / page).read_text(encoding="utf-8").lower()
    return counts


def _fresh(scratch: Path) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(dir=scratch)


# ---------------------------------------------------------------------------------------------------------
# F1, F2: staging.

@settings(max_examples=40, **COMMON)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=20))
def test_staging_accounts_for_every_line(base, scratch, mutations):
    with _fresh(scratch) as directory:
        stage_and_check(mutate(Corpus(base.files), mutations), Path(directory), f"sqlite:///{directory}/r.sqlite")


@pytest.mark.slow
@settings(max_examples=400, **COMMON)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=30))
def test_staging_accounts_for_every_line_many(base, scratch, mutations):
    with _fresh(scratch) as directory:
        stage_and_check(mutate(Corpus(base.files), mutations), Path(directory), f"sqlite:///{directory}/r.sqlite")


def test_every_kind_at_once_is_staged_and_accounted(base, tmp_path, registry_factory):
    """The every-kind input on SQLite and PostgreSQL (which, unlike SQLite, enforces column lengths and
    refuses NUL characters in text)."""
    url = registry_factory()
    mutations = EVERY_KIND if url.startswith("sqlite") else [m for m in EVERY_KIND if m not in LONG_TYPES]
    counts = stage_and_check(mutate(Corpus(base.files), mutations), tmp_path, url)
    assert counts["loaded"] and counts["quarantined"] >= 20 and counts["excluded"]


# ---------------------------------------------------------------------------------------------------------
# F3: whole runs.

# Every kind of fault at once and one random draw here (the staging tests above take 40 draws, the slow
# variant below 25 whole runs).
@settings(max_examples=1, phases=RUN_PHASES, **COMMON)
@example(mutations=EVERY_KIND)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=12))
def test_run_never_crashes_and_accounts_for_every_line(base, scratch, mutations):
    with _fresh(scratch) as directory:
        run_and_check(mutate(Corpus(base.files), mutations), Path(directory))


@pytest.mark.slow
@settings(max_examples=25, phases=RUN_PHASES, **COMMON)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=25))
def test_run_never_crashes_and_accounts_for_every_line_many(base, scratch, mutations):
    with _fresh(scratch) as directory:
        run_and_check(mutate(Corpus(base.files), mutations), Path(directory))


@pytest.mark.slow
def test_run_every_kind_at_once_on_postgresql(base, tmp_path, pg_url):
    """F3 on PostgreSQL, which enforces column lengths (source values, concept codes) that SQLite ignores."""
    run_and_check(mutate(Corpus(base.files), [m for m in EVERY_KIND if m not in LONG_TYPES]), tmp_path, pg_url)


# ---------------------------------------------------------------------------------------------------------
# The file reader (etl/extract/files.py).

def test_untyped_file_with_odd_resource_types_is_read_once(tmp_path):
    """A file named for no type may hold anything; each line is yielded in exactly one of the two passes."""
    lines = ['{"resourceType": [], "id": "a"}', '{"resourceType": {}, "id": "b"}', '{"resourceType": 42}',
             '{"a":' + "[" * 5000 + "]" * 5000 + "}", '{"n": ' + "9" * 5000 + "}", '{"resourceType": "Patient", "id": "p"}',
             '{"resourceType": "Foo", "id": "f"}']
    (tmp_path / MISC).write_text("\n".join(lines) + "\n")
    source = FileSource(tmp_path)
    first = [r.location for r in source.records(types=FIRST_PASS)]
    second = [r.location for r in source.records(exclude=FIRST_PASS)]
    assert first == [f"{MISC}:6"]
    assert sorted(first + second) == sorted(f"{MISC}:{n}" for n in range(1, 8))


def test_bundle_nested_too_deeply_is_one_unreadable_record(tmp_path):
    (tmp_path / "bundle.json").write_text('{"resourceType": "Bundle", "entry": ' + "[" * 5000 + "]" * 5000 + "}")
    (record,) = FileSource(tmp_path).records()
    assert record.expected_type == "!not valid JSON: nested too deeply"


@pytest.mark.parametrize("damage", ["cut short", "not gzip"])
def test_damaged_gzip_stops_the_run_before_anything_is_staged(base, tmp_path, damage):
    """A snapshot that cannot be read to its end must not be staged: reading on would delete every staged
    resource after the damage. The run fails with an ExtractError naming the file, and the registry keeps
    what it had."""
    source = tmp_path / "source"
    Corpus(base.files).write(source)
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    registry = open_registry(url)
    stage_source(registry.engine, registry.tables, FileSource(source), CODES, Pseudonymizer(), "first",
                 SUPPORTED_TYPES, show_progress=False)
    staging = registry.tables["fhir_resource"]
    with registry.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(staging)).scalar_one()
    data = gzip.compress((source / "Observation.ndjson").read_bytes())
    (source / "Observation.ndjson").unlink()
    (source / "Observation.ndjson.gz").write_bytes(data[: len(data) // 2] if damage == "cut short" else b"plain\n")
    with pytest.raises(ExtractError, match="Observation.ndjson.gz cannot be read after line"):
        stage_source(registry.engine, registry.tables, FileSource(source), CODES, Pseudonymizer(), "second",
                     SUPPORTED_TYPES, show_progress=False)
    with registry.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(staging)).scalar_one() == before
    registry.engine.dispose()


# ---------------------------------------------------------------------------------------------------------
# Single lines that broke staging (etl/stage, not owned here), fixed. A defect still open is marked xfail(strict=True).

def _one_line(base, tmp_path, line: bytes, url: str | None = None) -> dict:
    """Stage the cohort plus `line` (in Observation.ndjson) and check F1, F2 (default: on SQLite)."""
    corpus = Corpus(base.files)
    corpus.files["Observation.ndjson"].append(line)
    return stage_and_check(corpus, tmp_path, url or f"sqlite:///{tmp_path / 'r.sqlite'}")


def test_nul_character_in_a_valid_resource(base, tmp_path, registry_url):
    """NUL is allowed in a FHIR string; PostgreSQL text cannot hold it."""
    resource = json.loads(base.files["Observation.ndjson"][0])
    resource.update(id="nul", note=[{"text": "before\u0000after"}])
    counts = _one_line(base, tmp_path, _dump(resource), registry_url)
    assert counts["resources_read"] == sum(map(len, base.files.values())) + 1


def test_json_nested_beyond_the_recursion_limit_is_quarantined(base, tmp_path):
    _one_line(base, tmp_path, b'{"resourceType":"Observation","id":"deep","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}")


def test_lone_surrogate_escape_is_quarantined(base, tmp_path):
    resource = {k: v for k, v in json.loads(base.files["Observation.ndjson"][0]).items() if k != "valueBoolean"}
    resource.update(id="surrogate", valueString="\ud800")
    _one_line(base, tmp_path, _dump(resource, ascii_only=True))


def test_lone_surrogate_in_a_valid_resource(base, tmp_path, registry_url):
    """A lone surrogate escape inside an otherwise valid resource: loaded or quarantined, never a crash."""
    resource = json.loads(base.files["Observation.ndjson"][0])
    resource.update(id="surrogate-note", note=[{"text": "before \ud800 after"}])
    counts = _one_line(base, tmp_path, _dump(resource, ascii_only=True), registry_url)
    assert counts["resources_read"] == sum(map(len, base.files.values())) + 1


def test_number_of_5000_digits_is_quarantined(base, tmp_path):
    _one_line(base, tmp_path, b'{"resourceType":"Observation","id":"long","valueInteger":' + b"9" * 5000 + b"}")


def test_resource_type_longer_than_the_column_is_quarantined_on_postgresql(base, tmp_path, pg_url):
    resource = json.loads(base.files["Observation.ndjson"][0])
    resource["resourceType"] = "x" * 300
    corpus = Corpus(base.files)
    corpus.files["Observation.ndjson"].append(_dump(resource))
    stage_and_check(corpus, tmp_path, pg_url)
