"""The annotated report-text corpus (tests/nlp_corpus/) is well-formed, and the extractor scores on it."""
from __future__ import annotations

import importlib.util
import re
from collections import Counter

import pytest

from tests.conftest import REPO

_SPEC = importlib.util.spec_from_file_location("nlp_eval", REPO / "scripts" / "nlp_eval.py")
nlp_eval = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(nlp_eval)

SEGMENT = r"(?:[1-8]|4a|4b)"
SEGMENT_RE = re.compile(rf"^{SEGMENT}(?:/{SEGMENT})?$")
ID_RE = re.compile(r"^(en|ja)-(img|op|path|fu)-\d{3}$")
ID_KIND = {"img": "imaging", "op": "operative", "path": "pathology", "fu": "followup"}
MIN_REPORTS = {"en": 150, "ja": 100}


@pytest.fixture(scope="module")
def reports():
    return nlp_eval.load_corpus()


def test_ids_unique_and_consistent(reports):
    ids = Counter(r["id"] for r in reports)
    assert not [i for i, n in ids.items() if n > 1], "duplicate ids"
    for r in reports:
        m = ID_RE.match(r["id"])
        assert m, r["id"]
        assert m.group(1) == r["lang"] and ID_KIND[m.group(2)] == r["kind"], r["id"]


def test_reports_well_formed(reports):
    for r in reports:
        assert set(r) == {"id", "kind", "lang", "text", "expected"}, r["id"]
        assert r["kind"] in nlp_eval.KINDS, r["id"]
        assert r["lang"] in ("en", "ja"), r["id"]
        assert isinstance(r["text"], str) and len(r["text"].strip()) >= 20, r["id"]
        assert isinstance(r["expected"], list), r["id"]
        no_recurrence = 0
        for e in r["expected"]:
            assert set(e) == {"segment", "finding", "size_mm"}, r["id"]
            assert e["finding"] in nlp_eval.FINDINGS_BY_KIND[r["kind"]], (r["id"], e)
            assert e["size_mm"] is None or (isinstance(e["size_mm"], float) and 0 < e["size_mm"] < 300), \
                (r["id"], e)
            if e["finding"] == "no_recurrence":
                no_recurrence += 1
                assert e["segment"] is None and e["size_mm"] is None, (r["id"], e)
            else:
                assert isinstance(e["segment"], str) and SEGMENT_RE.match(e["segment"]), (r["id"], e)
                a, _, b = e["segment"].partition("/")
                assert a != b, (r["id"], e)
        assert no_recurrence <= 1, r["id"]
        if no_recurrence:
            assert all(e["finding"] == "no_recurrence" for e in r["expected"]), r["id"]


def test_corpus_size_and_coverage(reports):
    by_lang = Counter(r["lang"] for r in reports)
    for lang, minimum in MIN_REPORTS.items():
        assert by_lang[lang] >= minimum, (lang, by_lang[lang])
    by_lang_kind = Counter((r["lang"], r["kind"]) for r in reports)
    for lang in MIN_REPORTS:
        for kind in nlp_eval.KINDS:
            assert by_lang_kind[(lang, kind)] > 0, (lang, kind)
    findings = Counter(e["finding"] for r in reports for e in r["expected"])
    assert set(findings) == set(nlp_eval.FINDINGS), findings
    empty = sum(1 for r in reports if not r["expected"])
    assert 0.05 <= empty / len(reports) <= 0.2, empty


def test_scoring_perfect_and_imperfect(reports):
    class P:
        def __init__(self, segment, finding, size_mm):
            self.segment, self.finding, self.size_mm = segment, finding, size_mm

    truth = {r["id"]: r["expected"] for r in reports}
    by_text = {(r["text"], r["kind"], r["lang"]): r["id"] for r in reports}

    def oracle(text, kind, lang):
        return [P(**e) for e in reversed(truth[by_text[(text, kind, lang)]])]

    perfect = nlp_eval.evaluate(reports, oracle)
    assert perfect["overall"]["f1"] == 1.0 and perfect["size"]["accuracy"] == 1.0
    assert not perfect["errors"]

    sample = [r for r in reports if len(r["expected"]) >= 2][:3]

    def lossy(text, kind, lang):
        found = [P(**e) for e in truth[by_text[(text, kind, lang)]]][1:]
        return found + [P("8", "visible", None)]

    scored = nlp_eval.evaluate(sample, lossy)
    n = sum(len(r["expected"]) for r in sample)
    assert scored["overall"]["tp"] == n - 3 and scored["overall"]["fn"] == 3 and scored["overall"]["fp"] == 3


def test_extractor_f1_on_corpus(reports):
    try:
        from etl.nlp import extract
    except ImportError as exc:
        pytest.skip(f"etl.nlp not importable yet: {exc}")
    metrics = nlp_eval.evaluate(reports, extract)
    f1 = metrics["overall"]["f1"]
    detail = ", ".join(f"{k} {v['f1']:.3f}" for k, v in metrics["by_finding"].items())
    assert f1 >= 0.95, (f"overall F1 {f1:.3f} < 0.95 (P {metrics['overall']['precision']:.3f}, "
                        f"R {metrics['overall']['recall']:.3f}; {detail}); run scripts/nlp_eval.py --errors")
