"""Tests of the synthetic cohort generator (etl.synth).

The central check (test_truth_matches_observable_rules) re-derives every lesion's group, handling
and outcome and every patient's strategy and survival from the FHIR files alone, by the rules of
docs/fhir_profile.md, and compares them with truth.json.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from etl.synth import SynthParams, write_cohort
from etl.synth.params import dream_reference

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("Patient", "Condition", "BodyStructure", "DiagnosticReport", "Observation", "Procedure",
         "MedicationAdministration", "DocumentReference")
MONTH = 30.4375
WINDOW_DAYS = 24 * MONTH
# Codings deliberately emitted outside the mapping CSV (structural, never read by the extractor).
STRUCTURAL = {("http://terminology.hl7.org/CodeSystem/v2-0203", "MR")}

with (ROOT / "mappings" / "fhir_codes.csv").open(newline="", encoding="utf-8") as _f:
    MEANING = {(r["source_system"], r["source_code"]): r["registry_meaning"] for r in csv.DictReader(_f)}


# -- helpers -------------------------------------------------------------------------------------
def load(out: Path) -> dict[str, list[dict]]:
    return {rt: [json.loads(line) for line in (out / f"{rt}.ndjson").read_text(encoding="utf-8").splitlines()]
            for rt in TYPES}


def meanings(cc: dict | None) -> set[str]:
    return {MEANING.get((c["system"], c["code"])) for c in (cc or {}).get("coding", [])}


def ref_id(ref: dict) -> str:
    return ref["reference"].split("/", 1)[1]


def owner(resource: dict) -> str:
    if resource["resourceType"] == "Patient":
        return resource["id"]
    return ref_id(resource.get("subject") or resource["patient"])


def day(value: str) -> date:
    return date.fromisoformat(value[:10])


def dates_of(resource: dict) -> list[date]:
    found = [resource.get(k) for k in ("effectiveDateTime", "performedDateTime", "onsetDateTime", "recordedDate",
                                       "date", "deceasedDateTime")]
    found += [(resource.get(k) or {}).get("end") for k in ("performedPeriod", "effectivePeriod")]
    found += [(resource.get(k) or {}).get("start") for k in ("performedPeriod", "effectivePeriod")]
    return [day(v) for v in found if v]


def boolean(obs: dict) -> bool:
    if "valueBoolean" in obs:
        return obs["valueBoolean"]
    m = meanings(obs["valueCodeableConcept"])
    assert m in ({"value_true"}, {"value_false"}), obs
    return m == {"value_true"}


def all_codings(node):
    if isinstance(node, dict):
        if "system" in node and "code" in node and "value" not in node:
            yield node["system"], node["code"]
        for v in node.values():
            yield from all_codings(v)
    elif isinstance(node, list):
        for v in node:
            yield from all_codings(v)


def observe(res: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Lesion rows and patient rows derived from FHIR only, by the rules of docs/fhir_profile.md."""
    obs = {o["id"]: o for o in res["Observation"]}
    procs = {p["id"]: p for p in res["Procedure"]}
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for rt in TYPES:
        for r in res[rt]:
            by_patient[owner(r)].append(r)

    lesions, patients = {}, {}
    for pid, items in by_patient.items():
        if not any("liver_metastasis" in meanings(r.get("code")) and "clinicalStatus" not in r
                   for r in items if r["resourceType"] == "Condition"):
            continue
        chemo_start = min(day((r.get("performedPeriod") or r.get("effectivePeriod"))["start"]) for r in items
                          if r["resourceType"] == "MedicationAdministration"
                          or "chemotherapy" in meanings(r.get("code")))
        heps = sorted(day(r["performedDateTime"]) for r in items if "hepatectomy" in meanings(r.get("code")))
        first, t0 = heps[0], heps[-1]
        post = {}  # (modality, lesion) -> (date, visible) of the latest post-chemo study
        follow = defaultdict(list)  # lesion -> [(date, visible)]
        follow_dates = []
        for r in items:
            if r["resourceType"] != "DiagnosticReport":
                continue
            kind = meanings(r["code"]) & {"imaging_ct", "imaging_mri"}
            if not kind:
                continue
            (modality,) = kind
            when = day(r["effectiveDateTime"])
            if when > t0:
                follow_dates.append(when)
            for ref in r.get("result", []):
                o = obs[ref_id(ref)]
                if "lesion_visible" not in meanings(o["code"]):
                    continue
                lesion = ref_id(o["focus"][0])
                if chemo_start < when <= first:
                    key = (modality, lesion)
                    if key not in post or post[key][0] < when:
                        post[key] = (when, boolean(o))
                elif when > t0:
                    follow[lesion].append((when, boolean(o)))
        handling, viable, ce = {}, {}, {}
        for r in items:
            if r["resourceType"] != "Observation":
                continue
            m = meanings(r["code"])
            if "lesion_handling" in m:
                lesion = ref_id(r["focus"][0])
                handling[lesion] = meanings(r["valueCodeableConcept"]).pop().removeprefix("handling_")
                hep = ref_id(r["partOf"][0])
                ious = [p for p in procs.values() if ref_id(p.get("partOf", [{"reference": "x/"}])[0]) == hep]
                ce[lesion] = "ce_ious" in meanings(ious[0]["code"])
            elif "viable_tumor" in m:
                viable[ref_id(r["focus"][0])] = r["valueBoolean"]
        pr = {}
        for b in (r for r in items if r["resourceType"] == "BodyStructure"):
            ct, mri = post[("imaging_ct", b["id"])][1], post.get(("imaging_mri", b["id"]), (None, None))[1]
            group = "not_disappeared" if ct else ("ct_and_mri_disappeared" if mri is False
                                                 else "ct_disappeared_mri_visible")
            h = handling[b["id"]]
            outcome = None
            if group != "not_disappeared":
                if h == "resected":
                    outcome = {True: "residual", False: "true_negative", None: "unevaluable"}[viable.get(b["id"])]
                elif any(v and (d - t0).days <= WINDOW_DAYS for d, v in follow[b["id"]]):
                    outcome = "residual"
                elif follow_dates and (max(follow_dates) - t0).days >= WINDOW_DAYS:
                    outcome = "true_negative"
                else:
                    outcome = "unevaluable"
            pr[b["id"]] = {"group": group, "handling": h, "outcome": outcome, "ce_ious": ce[b["id"]],
                           "lesion": b["identifier"][0]["value"], "patient": pid}
        lesions.update(pr)
        dlms = [v for v in pr.values() if v["group"] == "ct_and_mri_disappeared"]
        strategy = None if not dlms else (
            "all_dlm_removed" if all(v["handling"] != "left_in_place" for v in dlms) else "dlm_left_behind")
        last = max(d for r in items for d in dates_of(r))
        death = next((day(r["deceasedDateTime"]) for r in items if "deceasedDateTime" in r), None)
        recurrences = [day(r["onsetDateTime"]) for r in items if r["resourceType"] == "Condition"
                       and "recurrence_status" in meanings(r.get("clinicalStatus")) and day(r["onsetDateTime"]) > t0]
        events = [d for d in [death, *recurrences] if d]
        patients[pid] = {
            "patient": pid, "strategy": strategy,
            "rfs_months": ((min(events) if events else last) - t0).days / MONTH, "rfs_event": bool(events),
            "os_months": ((death or last) - t0).days / MONTH, "os_event": death is not None,
            "chemo_drugs": sorted({r["medicationCodeableConcept"]["text"] for r in items
                                   if r["resourceType"] == "MedicationAdministration"}),
        }
    return lesions, patients


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort40(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth40")
    summary = write_cohort(out, 40, seed=11)
    return out, summary, load(out), json.loads((out / "truth.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cohort300(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth300")
    write_cohort(out, 300, seed=5, params=SynthParams(non_cohort_share=0.1))
    return load(out), json.loads((out / "truth.json").read_text(encoding="utf-8"))


# -- tests ---------------------------------------------------------------------------------------
def test_every_resource_validates_with_r4b_and_ids_are_unique(cohort40):
    _, _, res, _ = cohort40
    known = {(rt, r["id"]) for rt in TYPES for r in res[rt]}
    for rt in TYPES:
        assert res[rt], f"no {rt} written"
        model = get_fhir_model_class(rt)
        ids = [r["id"] for r in res[rt]]
        assert len(ids) == len(set(ids)), f"duplicate {rt} ids"
        for r in res[rt]:
            model.model_validate(r)
            for d in dates_of(r):
                assert date(2016, 1, 1) <= d <= date(2023, 12, 31), (rt, d)
            for key in ("subject", "patient"):
                if key in r:
                    assert ("Patient", ref_id(r[key])) in known
            for key in ("focus", "result", "partOf", "reasonReference"):
                for ref in r.get(key, []):
                    assert tuple(ref["reference"].split("/", 1)) in known, (rt, key, ref)


def test_codings_come_only_from_the_mapping_csv(cohort40):
    _, _, res, _ = cohort40
    seen = {c for rt in TYPES for r in res[rt] for c in all_codings(r)}
    assert seen - set(MEANING) == STRUCTURAL
    leucovorin = [m for m in res["MedicationAdministration"] if m["medicationCodeableConcept"].get("text") ==
                  "leucovorin"]
    assert leucovorin and all("coding" not in m["medicationCodeableConcept"] for m in leucovorin)


def test_summary_counts_match_files(cohort40):
    _, summary, res, truth = cohort40
    assert summary["resources"] == {rt: len(res[rt]) for rt in TYPES}
    assert summary["lesions"] == len(truth["lesions"]) == len(res["BodyStructure"])
    assert summary["patients"] == 40 == truth["params"]["patients"]
    assert truth["params"]["seed"] == 11


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    names = [f"{rt}.ndjson" for rt in TYPES] + ["truth.json"]
    for tag, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_cohort(tmp_path / tag, 12, seed)
    same = [(tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names]
    other = [(tmp_path / "a" / n).read_bytes() == (tmp_path / "c" / n).read_bytes() for n in names]
    assert all(same)
    assert not any(other)


def test_truth_lesions_are_body_structures_of_cohort_patients(cohort40):
    _, _, res, truth = cohort40
    body = {b["id"]: b for b in res["BodyStructure"]}
    cohort = {owner(c) for c in res["Condition"] if "liver_metastasis" in meanings(c["code"])}
    assert {p["patient"] for p in truth["patients"]} == cohort
    assert len({(l["patient"], l["lesion"]) for l in truth["lesions"]}) == len(truth["lesions"])
    for lesion in truth["lesions"]:
        b = body[lesion["body_structure"]]
        assert b["identifier"][0]["value"] == lesion["lesion"]
        assert owner(b) == lesion["patient"] and lesion["patient"] in cohort
        assert b["meta"]["profile"] == ["http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-tumor"]
        assert meanings(b["locationQualifier"][0]).pop().startswith("liver_segment_")


def test_non_cohort_patients_have_no_liver_metastasis_and_no_truth(tmp_path):
    write_cohort(tmp_path, 30, seed=2, params=SynthParams(non_cohort_share=0.5))
    res, truth = load(tmp_path), json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    cohort = {owner(c) for c in res["Condition"] if "liver_metastasis" in meanings(c["code"])}
    others = {p["id"] for p in res["Patient"]} - cohort
    assert len(others) >= 5
    assert not others & {l["patient"] for l in truth["lesions"]}
    assert not others & {p["patient"] for p in truth["patients"]}
    for rt in TYPES[1:]:
        for r in res[rt]:
            if owner(r) in others:
                assert rt in ("Condition", "DiagnosticReport", "Observation"), rt
                assert "liver_metastasis" not in meanings(r.get("code"))
    assert any(owner(r) in others for r in res["DiagnosticReport"])


def test_dlm_has_expected_imaging_observations(cohort300):
    res, truth = cohort300
    obs = {o["id"]: o for o in res["Observation"]}
    visible = defaultdict(list)  # body structure -> [(date, modality, visible, size given)]
    for r in res["DiagnosticReport"]:
        kind = meanings(r["code"]) & {"imaging_ct", "imaging_mri"}
        if not kind:
            continue
        (modality,) = kind
        results = [obs[ref_id(x)] for x in r.get("result", [])]
        sized = {ref_id(o["focus"][0]) for o in results if "lesion_size" in meanings(o["code"])}
        for o in results:
            if "lesion_visible" in meanings(o["code"]):
                b = ref_id(o["focus"][0])
                visible[b].append((r["effectiveDateTime"], modality, boolean(o), b in sized))
    for lesion in truth["lesions"]:
        studies = sorted(visible[lesion["body_structure"]])
        (_, m1, v1, s1), (_, m2, v2, s2), *_ = studies  # baseline CT then MRI
        assert (m1, v1, s1, m2, v2, s2) == ("imaging_ct", True, True, "imaging_mri", True, True)
        post = {m: (v, s) for _, m, v, s in studies[2:4]}
        expected = {
            "ct_and_mri_disappeared": {"imaging_ct": (False, False), "imaging_mri": (False, False)},
            "ct_disappeared_mri_visible": {"imaging_ct": (False, False), "imaging_mri": (True, True)},
        }.get(lesion["group"])
        if expected:
            assert post == expected, lesion
        else:
            assert post["imaging_ct"] == (True, True), lesion
        # follow-up lesion-visible only at left-in-place or ablated DLM sites; needed for their outcome
        tracked = lesion["group"] != "not_disappeared" and lesion["handling"] != "resected"
        follow = studies[4:]
        assert tracked or not follow, lesion
        if tracked and lesion["outcome"] != "unevaluable":
            assert follow, lesion


def test_truth_matches_observable_rules(cohort300):
    res, truth = cohort300
    lesions, patients = observe(res)
    truth_lesions = {l["body_structure"]: l for l in truth["lesions"]}
    assert set(lesions) == set(truth_lesions)
    for bid, row in lesions.items():
        t = truth_lesions[bid]
        assert {k: t[k] for k in row} == row, (bid, row, t)
    assert {p["patient"]: p for p in truth["patients"]} == patients
    # the cohort must exercise every branch of the rules
    assert {l["outcome"] for l in truth["lesions"]} == {None, "true_negative", "residual", "unevaluable"}
    assert {l["handling"] for l in truth["lesions"]} == {"resected", "ablated", "left_in_place"}
    assert {p["strategy"] for p in truth["patients"]} == {None, "all_dlm_removed", "dlm_left_behind"}
    assert Counter(p["rfs_event"] for p in truth["patients"]).keys() == {True, False}
    hepatectomies = Counter(owner(p) for p in res["Procedure"] if "hepatectomy" in meanings(p["code"]))
    assert set(hepatectomies.values()) == {1, 2}


def test_lesion_visible_values_are_mixed_boolean_and_coded(cohort300):
    res, _ = cohort300
    vis = [o for o in res["Observation"] if "lesion_visible" in meanings(o["code"])]
    coded = sum("valueCodeableConcept" in o for o in vis) / len(vis)
    assert 0.15 < coded < 0.25


def test_reports_carry_readable_text(cohort300):
    res, _ = cohort300
    bodies = {b["id"]: b for b in res["BodyStructure"]}
    obs = {o["id"]: o for o in res["Observation"]}
    report = next(r for r in res["DiagnosticReport"] if len(r.get("result", [])) > 4)
    text = base64.b64decode(report["presentedForm"][0]["data"]).decode("utf-8")
    assert report["presentedForm"][0]["contentType"] == "text/plain" and report["conclusion"] in text
    for ref in report["result"]:
        o = obs[ref_id(ref)]
        if "lesion_size" in meanings(o["code"]):
            segment = bodies[ref_id(o["focus"][0])]["locationQualifier"][0]["text"]
            assert f"{segment}: {o['valueQuantity']['value']} mm" in text
    note = res["DocumentReference"][0]
    assert meanings(note["type"]) == {"operative_note"}
    assert "Intraoperative ultrasound" in base64.b64decode(note["content"][0]["attachment"]["data"]).decode()


def test_defaults_come_from_the_dream_reference():
    ref = dream_reference()
    flow = ref["lesion_flow"]
    p = SynthParams()
    assert p.npv_ct_and_mri == ref["npv"]["ct_and_mri_disappeared"]["estimate"]
    assert p.p_disappear_mri_given_ct == flow["disappeared_on_ct_and_mri"]["lesions"] / flow["disappeared_on_ct"][
        "lesions"]
    rfs = ref["survival_by_surgical_strategy"]["relapse_free_survival"]
    assert p.rfs_median_months_all_dlm_removed == rfs["all_dlm_removed"]["median"]
    assert p.rfs_median_months_dlm_left_behind == rfs["dlm_left_behind"]["median"]
    with pytest.raises(ValueError):
        SynthParams(left_in_place_share=1.5)


def test_realised_npv_matches_parameter(tmp_path):
    """2,000 patients, default parameters.

    Death and loss to follow-up before the 24-month window make a left-in-place DLM without residual
    cancer unevaluable while a residual one is still seen to regrow (informative censoring), which
    lowers the NPV among all evaluable lesions. Among patients followed beyond the window (a
    condition independent of the lesions' latent state) the realised NPV must estimate the parameter.
    """
    params = SynthParams()
    write_cohort(tmp_path, 2000, seed=2024, params=params)
    truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    followed = {p["patient"] for p in truth["patients"] if p["os_months"] >= 28}
    rows = [l for l in truth["lesions"] if l["group"] == "ct_and_mri_disappeared" and l["patient"] in followed
            and l["outcome"] != "unevaluable"]
    n = len(rows)
    assert n > 1000
    npv = sum(l["outcome"] == "true_negative" for l in rows) / n
    p = params.npv_ct_and_mri
    assert abs(npv - p) < 3.5 * math.sqrt(p * (1 - p) / n), (npv, n)
    # the outcome follows the latent residual for every evaluable lesion
    assert all((l["outcome"] == "residual") == l["residual_cells"] for l in rows)


def test_parameters_change_the_output(tmp_path):
    base = SynthParams()
    write_cohort(tmp_path / "none", 60, seed=9, params=replace(base, left_in_place_share=0.0))
    write_cohort(tmp_path / "all", 60, seed=9, params=replace(base, left_in_place_share=1.0))
    write_cohort(tmp_path / "nodlm", 60, seed=9, params=replace(base, p_disappear_ct=0.0))

    def truth(tag):
        return json.loads((tmp_path / tag / "truth.json").read_text(encoding="utf-8"))

    none, every, nodlm = truth("none"), truth("all"), truth("nodlm")
    assert not [l for l in none["lesions"] if l["handling"] == "left_in_place"]
    assert "left-in-place" not in (tmp_path / "none" / "Observation.ndjson").read_text(encoding="utf-8")
    assert {p["strategy"] for p in none["patients"]} <= {None, "all_dlm_removed"}
    assert [l for l in every["lesions"] if l["handling"] == "left_in_place"]
    assert {l["group"] for l in nodlm["lesions"]} == {"not_disappeared"}
    assert {l["outcome"] for l in nodlm["lesions"]} == {None}
    assert none["params"]["left_in_place_share"] == 0.0
