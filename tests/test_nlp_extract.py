"""Hand-made cases for each rule of the report-text extractor (ids from etl/nlp/context.py and engine.py).

These are development examples written for the rules; the independent evaluation corpus is tests/nlp_corpus/.
"""
from __future__ import annotations

import io
import json

import pytest

from etl import cli
from etl.nlp import KINDS, NLP_SYSTEM, NLP_VERSION, Mention, detect_language, extract
from etl.nlp.segments import find_segments
from etl.nlp.text import normalize


def got(text: str, kind: str = "imaging", lang: str = "auto") -> list[tuple]:
    return [(m.segment, m.finding, m.size_mm) for m in extract(text, kind, lang)]


# --- API ---------------------------------------------------------------------------------------------------

def test_api_constants():
    assert NLP_SYSTEM == "dlmreg-rules" and NLP_VERSION == "1.0"
    assert KINDS["operative"] == ("resected", "ablated", "left_in_place", "found_on_ious", "not_found_on_ious")


def test_mention_fields_point_at_the_text():
    text = "FINDINGS:\nThe lesion in segment VII is no longer visible."
    [m] = extract(text, "imaging")
    assert isinstance(m, Mention)
    assert m.lexical_variant == "segment VII" and text[m.offset:m.offset + len(m.lexical_variant)] == "segment VII"
    assert m.snippet == "The lesion in segment VII is no longer visible."
    assert "negated" in m.modifiers


def test_offsets_survive_full_width_text():
    text = "所見：肝Ｓ７の病変は消失。"
    [m] = extract(text, "imaging")
    assert m.segment == "7" and text[m.offset:m.offset + len(m.lexical_variant)] == m.lexical_variant == "Ｓ７"


@pytest.mark.parametrize("kind,lang", [("radiology", "en"), ("imaging", "fr")])
def test_unknown_kind_or_language(kind, lang):
    with pytest.raises(ValueError):
        extract("S7 lesion.", kind, lang)


def test_empty_text():
    assert extract("", "imaging") == [] and extract("   \n", "followup") == []


@pytest.mark.parametrize("text,lang", [
    ("The S7 lesion has disappeared.", "en"),
    ("肝S7の転移巣は消失している。", "ja"),
    ("CT: S7 12mm, S3 消失。", "ja"),
    ("", "en"),
])
def test_detect_language(text, lang):
    assert detect_language(text) == lang


# --- segments ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,lesions", [
    ("segment VII", ["7"]), ("segment 7", ["7"]), ("S7", ["7"]), ("seg 7", ["7"]), ("seg. VII", ["7"]),
    ("Couinaud segment 7", ["7"]), ("S4a", ["4a"]), ("segment IVb", ["4b"]), ("Seg. 4b", ["4b"]),
    ("S5/6", ["5/6"]), ("S6/5", ["5/6"]), ("S5-6", ["5/6"]), ("segments VI/VII", ["6/7"]),
    ("segments 2, 3 and 7", ["2", "3", "7"]), ("segments 5 and 8", ["5", "8"]),
    ("a single lesion straddling segments 4a and 8", ["4a/8"]), ("the caudate lobe", ["1"]),
    ("肝S7", ["7"]), ("S 7", ["7"]), ("Ｓ７", ["7"]), ("肝右葉S6", ["6"]), ("Ｓ５／６", ["5/6"]),
])
def test_segment_normalisation(text, lesions):
    hits = find_segments(normalize(text))
    assert [les for h in hits for les in h.lesions] == lesions


@pytest.mark.parametrize("text", ["right lower lobe S6 nodule", "右肺S6に結節", "右下葉S6", "L5/S1 disc",
                                  "segment 10", "S10", "12 mm lesion", "FOLFOX 6 cycles"])
def test_not_liver_segments(text):
    assert find_segments(normalize(text)) == []


def test_normalize_keeps_length():
    text = "Ｓ７に１２ｍｍ　の結節"
    assert len(normalize(text)) == len(text) and normalize(text) == "S7に12mm の結節"


# --- imaging -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("The S7 lesion has disappeared.", [("7", "not_visible", None)]),
    ("The segment VII lesion is no longer visible.", [("7", "not_visible", None)]),
    ("Complete response of the lesion in segment 3.", [("3", "not_visible", None)]),
    ("S2 lesion not detected on the current study.", [("2", "not_visible", None)]),
    ("The S8 lesion persists, measuring 12 mm.", [("8", "visible", 12.0)]),
    ("Residual 1.2 cm metastasis in segment 6.", [("6", "visible", 12.0)]),
    ("S4b: 12 x 10 mm, stable.", [("4b", "visible", 12.0)]),
    ("A new 8 mm lesion in segment 4a.", [("4a", "visible", 8.0)]),
    ("S7: not visible", [("7", "not_visible", None)]),
])
def test_imaging_english(text, expected):
    assert got(text) == expected


def test_e1_list_gives_one_mention_per_segment():
    assert got("Lesions in S2, S3 and S7 have disappeared.") == [
        ("2", "not_visible", None), ("3", "not_visible", None), ("7", "not_visible", None)]


def test_spanning_segments_are_one_lesion():
    assert got("A 22 mm lesion straddling segments 5 and 6 persists.") == [("5/6", "visible", 22.0)]
    assert got("The S5/6 lesion has disappeared.") == [("5/6", "not_visible", None)]


def test_e5_two_lesions_in_one_segment():
    assert got("Two lesions in segment 7 are still visible.") == [("7", "visible", None), ("7", "visible", None)]


def test_e2_two_lesions_two_findings_in_one_sentence():
    assert got("The S3 lesion has disappeared, while the S7 lesion persists (9 mm).") == [
        ("3", "not_visible", None), ("7", "visible", 9.0)]
    assert got("Complete response of the S7 metastasis and persistence of the S3 lesion.") == [
        ("7", "not_visible", None), ("3", "visible", None)]


def test_c4_only_the_current_status_counts():
    assert got("The S7 lesion, previously 25 mm, now 12 mm.") == [("7", "visible", 12.0)]
    assert got("The previously seen S3 lesion is no longer visible.") == [("3", "not_visible", None)]
    assert got("Segment 4a lesion smaller, now 6 mm (previously 11 mm).") == [("4a", "visible", 6.0)]
    assert got("The segment 2 lesion seen on the baseline study cannot be identified.") == [("2", "not_visible", None)]


def test_c4_history_section_alone_gives_nothing():
    assert got("HISTORY: S7 lesion 30 mm in 2024, treated with FOLFOX.") == []
    assert got("COMPARISON: CT of 2024 showed a 30 mm S7 lesion.\nFINDINGS:\nNo focal liver lesion.") == []


def test_c4_history_section_and_current_statement():
    text = "HISTORY: S7 lesion 30 mm in 2024.\nFINDINGS: The S7 lesion has disappeared."
    assert got(text) == [("7", "not_visible", None)]


def test_c2_negation_scope():
    assert got("No residual lesion in S7.") == [("7", "not_visible", None)]
    assert got("No new lesions. The S7 lesion is stable.") == [("7", "visible", None)]
    assert got("No new hepatic lesions.") == []
    assert got("S7: no significant change, 14 mm.") == [("7", "visible", 14.0)]


@pytest.mark.parametrize("text", [
    "Possible residual lesion in S7.",
    "Residual disease in segment 7 cannot be excluded.",
    "Equivocal 4 mm focus in S7.",
    "Subtle residual enhancement at the S7 site.",
])
def test_c3_hedged_presence_is_visible(text):
    mentions = extract(text, "imaging")
    assert [(m.segment, m.finding) for m in mentions] == [("7", "visible")]
    assert "hedged" in mentions[0].modifiers


def test_extrahepatic_and_primary_ignored():
    assert got("Two new lung nodules in the right lower lobe. Mesenteric lymph node 9 mm.") == []
    assert got("Sigmoid colon: known primary tumour with wall thickening, 35 mm.") == []
    assert got("Lungs: right lower lobe S6 nodule 5 mm. Liver: S6 lesion 7 mm.") == [("6", "visible", 7.0)]


def test_headers_and_impression_repeat_once():
    text = ("FINDINGS:\nThe S7 lesion is no longer visible. The S4a lesion measures 6 mm.\n"
            "IMPRESSION: Disappearance of the S7 metastasis; partial response of the S4a lesion.")
    assert got(text) == [("7", "not_visible", None), ("4a", "visible", 6.0)]


def test_bullets_and_table():
    text = "FINDINGS:\n- S8: 12 x 10 mm lesion.\n- S4b: not visible.\n| S6 | not visible |\n| S3 | 4 mm |"
    assert got(text) == [("8", "visible", 12.0), ("4b", "not_visible", None), ("6", "not_visible", None),
                         ("3", "visible", 4.0)]


def test_e4_heading_line():
    assert got("Not visible:\n- S2\n- S3\n") == [("2", "not_visible", None), ("3", "not_visible", None)]


@pytest.mark.parametrize("text,expected", [
    ("肝S7の転移巣は消失している。", [("7", "not_visible", None)]),
    ("S4aに径12mmの低吸収域を認める。", [("4a", "visible", 12.0)]),
    ("S3の病変は指摘できない。", [("3", "not_visible", None)]),
    ("S6の結節は同定できない。", [("6", "not_visible", None)]),
    ("S2の病変は描出されない。", [("2", "not_visible", None)]),
    ("Ｓ８の転移巣は１５ｍｍ大で、不変。", [("8", "visible", 15.0)]),
    ("S5/6に30mmの腫瘤を認める。", [("5/6", "visible", 30.0)]),
    ("S2、S3、S7の病変はいずれも消失。", [("2", "not_visible", None), ("3", "not_visible", None),
                                        ("7", "not_visible", None)]),
    ("S4aに径12mmの低吸収域を認め、前回（20mm）より縮小している。", [("4a", "visible", 12.0)]),
    ("S8の病変は25mmから12mmに縮小。", [("8", "visible", 12.0)]),
    ("S7に残存病変は認めない。", [("7", "not_visible", None)]),
    ("S7に淡い結節があり、残存を否定できない。", [("7", "visible", None)]),
    ("S3に再発疑いの結節を認める。", [("3", "visible", None)]),
    ("S3は消失、S7は12mmで残存。", [("3", "not_visible", None), ("7", "visible", 12.0)]),
    ("右肺S6に5mmの結節を認める。", []),
    ("【既往】S7に30mmの転移。\n【所見】S7の病変は消失している。", [("7", "not_visible", None)]),
])
def test_imaging_japanese(text, expected):
    assert got(text) == expected


# --- operative -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("The S7 lesion was resected.", [("7", "resected", None)]),
    ("Partial hepatectomy of segment 6 including the lesion.", [("6", "resected", None)]),
    ("RFA of the segment 8 lesion.", [("8", "ablated", None)]),
    ("The S2 lesion was treated with microwave ablation.", [("2", "ablated", None)]),
    ("The S4a DLM was left in place.", [("4a", "left_in_place", None)]),
    ("The S3 lesion was not resected.", [("3", "left_in_place", None)]),
    ("S7の病変を部分切除した。", [("7", "resected", None)]),
    ("S8にラジオ波焼灼を行った。", [("8", "ablated", None)]),
    ("S2は切除せず温存した。", [("2", "left_in_place", None)]),
    ("S3は経過観察とした。", [("3", "left_in_place", None)]),
])
def test_operative_handling(text, expected):
    assert got(text, "operative") == expected


def test_operative_ious_and_handling_give_two_mentions():
    text = "IOUS identified the 14 mm S3 lesion, which was resected. The S7 DLM was not seen on IOUS and was left in place."
    assert got(text, "operative") == [("3", "found_on_ious", 14.0), ("3", "resected", 14.0),
                                      ("7", "not_found_on_ious", None), ("7", "left_in_place", None)]


def test_operative_ious_japanese():
    text = "術中超音波でS6に腫瘤を同定し、部分切除した。S7の消失病変は造影術中超音波でも同定できず、温存した。"
    assert got(text, "operative") == [("6", "found_on_ious", None), ("6", "resected", None),
                                      ("7", "not_found_on_ious", None), ("7", "left_in_place", None)]


def test_e4_clause_without_segment_continues_the_lesion():
    assert got("Segment 7 lesion identified on CE-IOUS; it was ablated.", "operative") == [
        ("7", "found_on_ious", None), ("7", "ablated", None)]


def test_e8_resection_extent_is_not_a_lesion():
    text = "Left lateral sectionectomy (segments II-III) for the S3 lesion, which was seen on IOUS."
    assert sorted(got(text, "operative")) == [("3", "found_on_ious", None), ("3", "resected", None)]


# --- pathology -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Segment 7: viable adenocarcinoma, 14 mm.", [("7", "viable_tumor", 14.0)]),
    ("S3: no viable tumour cells; fibrosis only.", [("3", "no_viable_tumor", None)]),
    ("Segment 6 lesion: complete pathological response.", [("6", "no_viable_tumor", None)]),
    ("Segment 2: scar without tumour.", [("2", "no_viable_tumor", None)]),
    ("S8: necrosis only.", [("8", "no_viable_tumor", None)]),
    ("Specimen: liver, segment 7.\nMicroscopy: metastatic adenocarcinoma, 14 mm.", [("7", "viable_tumor", 14.0)]),
    ("S7: 腫瘍細胞の残存を認める。", [("7", "viable_tumor", None)]),
    ("S7: 線維化のみで、腫瘍細胞の残存を認めません。", [("7", "no_viable_tumor", None)]),
    ("S3: viableな腫瘍細胞は認めません。", [("3", "no_viable_tumor", None)]),
    ("肝S6: 壊死のみ。", [("6", "no_viable_tumor", None)]),
    ("Sigmoid colon: adenocarcinoma, pT3 N1.", []),
])
def test_pathology(text, expected):
    assert got(text, "pathology") == expected


# --- follow-up -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("No evidence of recurrence.", [(None, "no_recurrence", None)]),
    ("再発所見なし。", [(None, "no_recurrence", None)]),
    ("New 12 mm lesion in segment 7, consistent with local recurrence.", [("7", "recurrence", 12.0)]),
    ("S4aに10mm大の結節が出現しており、再発を疑う。", [("4a", "recurrence", 10.0)]),
    ("New liver lesion, suspicious for recurrence.", [(None, "recurrence", None)]),
    ("New lung nodules, suspicious for metastases. No liver recurrence.", [(None, "no_recurrence", None)]),
    ("Local recurrence at the colorectal anastomosis.", []),
    ("Post-surgical changes in segments 6 and 8. No evidence of intrahepatic recurrence.\nIMPRESSION: No recurrence.",
     [(None, "no_recurrence", None)]),
])
def test_followup(text, expected):
    assert got(text, "followup") == expected


# --- CLI -----------------------------------------------------------------------------------------------------

def test_cli_nlp_file(tmp_path, capsys):
    report = tmp_path / "report.txt"
    report.write_text("肝S7の転移巣は消失。S4aに径12mmの低吸収域を認める。", encoding="utf-8")
    assert cli.main(["nlp", str(report)]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"segment": "7", "finding": "not_visible", "size_mm": None},
        {"segment": "4a", "finding": "visible", "size_mm": 12.0}]


def test_cli_nlp_stdin_and_kind(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("The S7 lesion was not seen on IOUS and was left in place."))
    assert cli.main(["nlp", "-", "--kind", "operative", "--lang", "en"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"segment": "7", "finding": "not_found_on_ious", "size_mm": None},
        {"segment": "7", "finding": "left_in_place", "size_mm": None}]


def test_cli_nlp_missing_file(tmp_path, capsys):
    assert cli.main(["nlp", str(tmp_path / "missing.txt")]) == cli.EXIT_BAD_INPUT


# --- rules added while measuring on the evaluation corpus -------------------------------------------------------

def test_e8_findings_named_as_something_else_give_nothing():
    assert got("Small cyst in segment 3, unchanged. The S7 lesion has disappeared.") == [("7", "not_visible", None)]
    assert got("S3の嚢胞は不変。S7の転移巣は消失。") == [("7", "not_visible", None)]


def test_c4_clause_opening_on_the_past():
    assert got("Previously, there were lesions in S2 and S3.\nNow the S3 lesion measures 5 mm.") == [("3", "visible", 5.0)]
    assert got("前回MRI（4か月前）ではS2、S8に計2病変。\n今回、S8の病変のみ10mmで残存。S2には異常を認めない。") == [
        ("8", "visible", 10.0), ("2", "not_visible", None)]
    assert got("前回指摘したS3の病変は消失した。") == [("3", "not_visible", None)]


def test_japanese_no_longer_seen():
    assert got("S6、S7の肝転移は指摘できなくなった。") == [("6", "not_visible", None), ("7", "not_visible", None)]


def test_ious_heading_reaches_its_list_items():
    text = "Findings on IOUS:\nS2: 10 mm lesion - wedge resection\nS4a: not seen\nThe S4a lesion was left in situ."
    assert got(text, "operative") == [("2", "found_on_ious", 10.0), ("2", "resected", 10.0),
                                      ("4a", "not_found_on_ious", None), ("4a", "left_in_place", None)]


def test_e8_extent_named_after_the_segments():
    text = "Segment 5 and 6 bisegmentectomy for the lesion spanning S5/6, 22 mm, seen on IOUS."
    assert sorted(got(text, "operative")) == [("5/6", "found_on_ious", 22.0), ("5/6", "resected", 22.0)]


def test_e7_no_report_level_absence_beside_a_recurrence():
    text = "A 7 mm defect has reappeared in segment 3, in keeping with recurrence. Elsewhere no new lesions."
    assert got(text, "followup") == [("3", "recurrence", 7.0)]
    assert got("Local recurrence at the ablation zone in segment VIII.", "followup") == [("8", "recurrence", None)]


def test_e4_coreference_to_the_previous_sentence_in_operative_notes():
    text = "腹腔鏡下にS8の2病変とS7の1病変に対してマイクロ波凝固を施行した。いずれも腹腔鏡用超音波で描出された。"
    assert sorted(got(text, "operative")) == sorted([("8", "ablated", None), ("8", "ablated", None), ("7", "ablated", None),
                                                     ("8", "found_on_ious", None), ("8", "found_on_ious", None),
                                                     ("7", "found_on_ious", None)])
