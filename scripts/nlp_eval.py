#!/usr/bin/env python3
"""Score the report-text extractor (etl.nlp.extract) against the annotated corpus in tests/nlp_corpus/.

Matching is per report on (segment, finding) as a multiset: a predicted entry matches an as yet unmatched
expected entry of the same report with the same segment and finding (preferring one whose size agrees).
Precision, recall and F1 are given overall, per finding label, per language and per kind; size accuracy is
the share of matched entries with a stated expected size whose predicted size is within 0.5 mm.

    python scripts/nlp_eval.py            # table
    python scripts/nlp_eval.py --json     # metrics as JSON
    python scripts/nlp_eval.py --errors   # also list every mismatch

Exit code 0 after scoring; 2 if etl.nlp cannot be imported.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO / "tests" / "nlp_corpus"
CORPUS_FILES = ("en.jsonl", "ja.jsonl")
SIZE_TOLERANCE_MM = 0.5

KINDS = ("imaging", "operative", "pathology", "followup")
FINDINGS_BY_KIND = {
    "imaging": ("visible", "not_visible"),
    "operative": ("resected", "ablated", "left_in_place", "found_on_ious", "not_found_on_ious"),
    "pathology": ("viable_tumor", "no_viable_tumor"),
    "followup": ("recurrence", "no_recurrence"),
}
FINDINGS = tuple(f for kind in KINDS for f in FINDINGS_BY_KIND[kind])


def load_corpus(directory: Path | str = CORPUS_DIR, files: Iterable[str] = CORPUS_FILES) -> list[dict]:
    """All reports of the corpus files, in file order."""
    reports = []
    for name in files:
        path = Path(directory) / name
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    reports.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: {exc}") from exc
    return reports


def _default_extract() -> Callable[[str, str, str], list]:
    from etl.nlp import extract  # imported late: the corpus loads without it
    return extract


def _norm_segment(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).strip()


def _norm_size(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _predicted(entry: Any) -> dict:
    if isinstance(entry, dict):
        get = entry.get
    else:
        def get(name, default=None):
            return getattr(entry, name, default)
    return {"segment": _norm_segment(get("segment")), "finding": str(get("finding")),
            "size_mm": _norm_size(get("size_mm"))}


def _size_ok(expected: float | None, predicted: float | None) -> bool:
    return expected is not None and predicted is not None and abs(expected - predicted) <= SIZE_TOLERANCE_MM


def match_report(expected: list[dict], predicted: list[dict]) -> tuple[list, list, list]:
    """(matched pairs, unmatched expected, unmatched predicted) for one report."""
    pool = [dict(e, segment=_norm_segment(e.get("segment")), size_mm=_norm_size(e.get("size_mm")))
            for e in expected]
    used = [False] * len(pool)
    matched, false_pos = [], []
    for pred in predicted:
        candidates = [i for i, e in enumerate(pool)
                      if not used[i] and e["segment"] == pred["segment"] and e["finding"] == pred["finding"]]
        if not candidates:
            false_pos.append(pred)
            continue
        best = next((i for i in candidates if _size_ok(pool[i]["size_mm"], pred["size_mm"])), None)
        if best is None:
            best = next((i for i in candidates if pool[i]["size_mm"] is None and pred["size_mm"] is None),
                        candidates[0])
        used[best] = True
        matched.append((pool[best], pred))
    false_neg = [e for i, e in enumerate(pool) if not used[i]]
    return matched, false_neg, false_pos


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(f1, 4)}


def evaluate(reports: list[dict], extract: Callable[[str, str, str], list] | None = None) -> dict:
    """Run the extractor on every report and score it. Returns the metrics (and the mismatches)."""
    if extract is None:
        extract = _default_extract()
    counts: dict[str, dict[str, list[int]]] = {
        "overall": defaultdict(lambda: [0, 0, 0]), "finding": defaultdict(lambda: [0, 0, 0]),
        "lang": defaultdict(lambda: [0, 0, 0]), "kind": defaultdict(lambda: [0, 0, 0])}
    size_total = size_correct = 0
    errors: list[dict] = []
    exceptions = 0
    for report in reports:
        rid, kind, lang = report["id"], report["kind"], report["lang"]
        try:
            predicted = [_predicted(p) for p in (extract(report["text"], kind, lang) or [])]
        except Exception as exc:  # a crash on one report is scored as no predictions
            exceptions += 1
            predicted = []
            errors.append({"id": rid, "type": "exception", "detail": f"{type(exc).__name__}: {exc}"})
        matched, false_neg, false_pos = match_report(report.get("expected", []), predicted)

        def bump(slot: int, finding: str) -> None:
            for group, key in (("overall", "all"), ("finding", finding), ("lang", lang), ("kind", kind)):
                counts[group][key][slot] += 1

        for exp, pred in matched:
            bump(0, exp["finding"])
            if exp["size_mm"] is not None:
                size_total += 1
                if _size_ok(exp["size_mm"], pred["size_mm"]):
                    size_correct += 1
                else:
                    errors.append({"id": rid, "type": "size", "segment": exp["segment"],
                                   "finding": exp["finding"], "expected_size_mm": exp["size_mm"],
                                   "predicted_size_mm": pred["size_mm"]})
        for pred in false_pos:
            bump(1, pred["finding"])
            errors.append({"id": rid, "type": "false_positive", "segment": pred["segment"],
                           "finding": pred["finding"], "size_mm": pred["size_mm"]})
        for exp in false_neg:
            bump(2, exp["finding"])
            errors.append({"id": rid, "type": "false_negative", "segment": exp["segment"],
                           "finding": exp["finding"], "size_mm": exp["size_mm"]})
    return {
        "reports": len(reports),
        "overall": _prf(*counts["overall"]["all"]),
        "by_finding": {k: _prf(*v) for k, v in sorted(counts["finding"].items(), key=lambda kv: _order(kv[0]))},
        "by_lang": {k: _prf(*v) for k, v in sorted(counts["lang"].items())},
        "by_kind": {k: _prf(*v) for k, v in sorted(counts["kind"].items(), key=lambda kv: _order(kv[0]))},
        "size": {"n": size_total, "correct": size_correct,
                 "accuracy": round(size_correct / size_total, 4) if size_total else None},
        "exceptions": exceptions,
        "errors": errors,
    }


def _order(key: str) -> tuple[int, str]:
    for seq in (FINDINGS, KINDS):
        if key in seq:
            return (seq.index(key), key)
    return (len(FINDINGS), key)


def format_table(metrics: dict) -> str:
    lines = [f"{'':<22}{'TP':>6}{'FP':>6}{'FN':>6}{'prec':>8}{'recall':>8}{'F1':>8}"]

    def row(label: str, m: dict) -> None:
        lines.append(f"{label:<22}{m['tp']:>6}{m['fp']:>6}{m['fn']:>6}"
                     f"{m['precision']:>8.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}")

    for section, title in (("by_finding", "finding"), ("by_kind", "kind"), ("by_lang", "language")):
        lines.append(f"-- {title}")
        for key, m in metrics[section].items():
            row(f"  {key}", m)
    lines.append("--")
    row("overall", metrics["overall"])
    size = metrics["size"]
    acc = "n/a" if size["accuracy"] is None else f"{size['accuracy']:.3f}"
    lines.append(f"size accuracy (±{SIZE_TOLERANCE_MM} mm, matched entries with a stated size): "
                 f"{size['correct']}/{size['n']} = {acc}")
    lines.append(f"reports: {metrics['reports']}; extractor exceptions: {metrics['exceptions']}")
    return "\n".join(lines)


def _seg(segment: str | None) -> str:
    return "(report)" if segment is None else f"S{segment}"


def format_errors(metrics: dict) -> str:
    out = []
    for e in metrics["errors"]:
        if e["type"] == "exception":
            out.append(f"{e['id']:<14} EXCEPTION {e['detail']}")
        elif e["type"] == "size":
            out.append(f"{e['id']:<14} SIZE      {_seg(e['segment'])} {e['finding']}: expected {e['expected_size_mm']}"
                       f" mm, predicted {e['predicted_size_mm']}")
        else:
            tag = "FP" if e["type"] == "false_positive" else "FN"
            size = "" if e["size_mm"] is None else f" ({e['size_mm']} mm)"
            out.append(f"{e['id']:<14} {tag:<9} {_seg(e['segment'])} {e['finding']}{size}")
    return "\n".join(out) if out else "no mismatches"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--errors", action="store_true", help="list every mismatch")
    parser.add_argument("--corpus", default=str(CORPUS_DIR), help="directory holding en.jsonl and ja.jsonl")
    parser.add_argument("--lang", choices=("en", "ja"), help="score one language only")
    args = parser.parse_args(argv)

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        extract = _default_extract()
    except ImportError as exc:
        print(f"etl.nlp is not importable yet ({exc}); nothing to evaluate.", file=sys.stderr)
        return 2
    reports = load_corpus(args.corpus)
    if args.lang:
        reports = [r for r in reports if r["lang"] == args.lang]
    metrics = evaluate(reports, extract)
    if args.json:
        shown = metrics if args.errors else {k: v for k, v in metrics.items() if k != "errors"}
        print(json.dumps(shown, ensure_ascii=False, indent=2))
    else:
        print(format_table(metrics))
        if args.errors:
            print()
            print(format_errors(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
