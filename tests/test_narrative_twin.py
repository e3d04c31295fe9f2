"""Acceptance (issue #7): a cohort whose lesions exist only in report text (English and Japanese) gives
the same per-lesion groups and outcomes, and the same patient strategies, as its structured twin.

The twins share seed and clinical courses; the narrative-only one has no lesion BodyStructures and no
per-lesion Observations, so every lesion fact comes from the extractor via NOTE_NLP (etl.lesions.text).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
import sqlalchemy as sa

from etl.pipeline import RunSettings, run
from etl.stage.pseudonym import Pseudonymizer

LESIONS = ("SELECT p.person_source_value, l.liver_segment, o.dlm_group, o.outcome FROM {dlm}dlm_lesion l "
           "JOIN {dlm}dlm_lesion_outcome o ON o.lesion_id = l.lesion_id JOIN {cdm}person p ON p.person_id = l.person_id")
STRATEGY = ("SELECT p.person_source_value, c.strategy FROM {cdm}person p "
            "JOIN {dlm}dlm_patient_course c ON c.person_id = p.person_id")


def _rows(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(url)
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        rows = conn.execute(sa.text(sql.format(cdm="cdm." if postgres else "", dlm="dlm." if postgres else ""))).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def _lesions_by_patient(url: str) -> dict[str, Counter]:
    found: dict[str, Counter] = defaultdict(Counter)
    for patient, segment, group, outcome in _rows(url, LESIONS):
        found[patient][(segment, group, outcome)] += 1
    return dict(found)


@pytest.fixture(scope="module")
def twins(cohort_factory, tmp_path_factory):
    results = {}
    for name, share in (("structured", 0.0), ("narrative", 1.0)):
        source = cohort_factory(30, 71, narrative_only_share=share)
        url = f"sqlite:///{tmp_path_factory.mktemp(name) / 'registry.sqlite'}"
        results[name] = {"source": source, "url": url,
                         "results": run(RunSettings(source=str(source), registry_url=url,
                                                    out_dir=tmp_path_factory.mktemp(name + "_out"),
                                                    show_progress=False))}
    return results


def test_narrative_cohort_has_no_structured_lesion_facts_and_both_languages(twins):
    source = twins["narrative"]["source"]
    assert (source / "BodyStructure.ndjson").read_text() == ""
    languages = {form["language"] for line in (source / "DiagnosticReport.ndjson").read_text().splitlines()
                 for form in json.loads(line).get("presentedForm", [])}
    assert languages == {"en", "ja"}


def test_narrative_twin_recovers_the_structured_groups_and_outcomes(twins):
    structured = _lesions_by_patient(twins["structured"]["url"])
    narrative = _lesions_by_patient(twins["narrative"]["url"])
    assert sum(c.total() for c in structured.values()) > 50
    assert narrative == structured
    assert dict(_rows(twins["narrative"]["url"], STRATEGY)) == dict(_rows(twins["structured"]["url"], STRATEGY))
    npv = {name: twin["results"]["npv"] for name, twin in twins.items()}
    assert npv["narrative"] == npv["structured"]


def test_narrative_lesions_match_the_truth(twins):
    truth = json.loads((twins["narrative"]["source"] / "truth.json").read_text())
    pseudo = Pseudonymizer()
    expected: dict[str, Counter] = defaultdict(Counter)
    for lesion in truth["lesions"]:
        expected[pseudo.patient(lesion["patient"])][(lesion["segment"], lesion["group"], lesion["outcome"])] += 1
    assert _lesions_by_patient(twins["narrative"]["url"]) == dict(expected)


def test_note_nlp_rows_record_the_findings(twins):
    rows = _rows(twins["narrative"]["url"], "SELECT nlp_system, term_exists, term_modifiers, lexical_variant, "
                                            "snippet, \"offset\" FROM {cdm}note_nlp")
    assert len(rows) > 100
    assert {r[0] for r in rows} == {rows[0][0]} and rows[0][0].startswith("dlmreg-rules ")
    assert {r[1] for r in rows} == {"Y", "N"}
    # report text is not stored unless configured: no snippets, and NOTE holds no text
    assert all(r[2].startswith("finding=") and r[3] and not r[4] and int(r[5]) >= 0 for r in rows)
    notes = _rows(twins["narrative"]["url"], "SELECT note_title, note_text FROM {cdm}note")
    assert notes and all(title and text == "" for title, text in notes)


def test_report_text_is_stored_when_configured(cohort_factory, tmp_path, monkeypatch):
    source = cohort_factory(4, 71, narrative_only_share=1.0)
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    monkeypatch.setenv("DLMREG_STORE_NOTE_TEXT", "1")
    run(RunSettings(source=str(source), registry_url=url, out_dir=tmp_path / "out", show_progress=False))
    notes = _rows(url, "SELECT note_text FROM {cdm}note")
    snippets = _rows(url, "SELECT snippet, lexical_variant FROM {cdm}note_nlp")
    assert notes and all(len(text) > 50 for (text,) in notes)
    assert snippets and all(lexical in snippet for snippet, lexical in snippets)
    # turning it off again re-maps every patient (the setting is part of the mapping digest): text gone
    monkeypatch.delenv("DLMREG_STORE_NOTE_TEXT")
    run(RunSettings(source=str(source), registry_url=url, out_dir=tmp_path / "out2", show_progress=False))
    assert all(text == "" for (text,) in _rows(url, "SELECT note_text FROM {cdm}note"))


def test_structured_cohort_text_agrees_with_its_structured_facts(twins):
    """The structured twin carries the same facts twice (Observations and report text): every text finding
    is compared (dlm_text_comparison) and agrees, so the warning check DLM13 passes."""
    compared = _rows(twins["structured"]["url"], "SELECT fact, agrees FROM {dlm}dlm_text_comparison")
    assert {fact for fact, _ in compared} >= {"ct", "mri", "pathology", "handling"}
    assert [row for row in compared if not row[1]] == []
    quality = twins["structured"]["results"]["quality"]
    assert "DLM13:text_agrees_with_structured" not in quality["failed_warning_checks"]
