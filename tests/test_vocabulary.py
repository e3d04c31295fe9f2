"""Mappings are data with provenance; no concept_id that was not verified; site CSVs extend them."""
from __future__ import annotations

import csv

import pytest

import mappings
from etl.vocabulary import CODE_COLUMNS, load_code_map
from tests.conftest import SHARED_REFERENCE


def _verified_ids() -> set[int]:
    rows = csv.DictReader((SHARED_REFERENCE / "dlm_concepts.csv").open())
    return {int(r["concept_id"]) for r in rows
            if r["concept_id"] and r["note"].lower().startswith("verified") and "do not use" not in r["note"].lower()}


@pytest.mark.skipif(not SHARED_REFERENCE.exists(), reason="shared/reference not beside the checkout")
def test_every_nonzero_concept_id_is_a_verified_one():
    ids = {int(r["target_concept_id"]) for r in csv.DictReader((mappings.DIRECTORY / "fhir_codes.csv").open())}
    ids |= {int(r["concept_id"]) for r in csv.DictReader((mappings.DIRECTORY / "omop_conventions.csv").open())}
    assert (ids - {0}) <= _verified_ids()


def test_every_row_names_its_source():
    for row in csv.DictReader((mappings.DIRECTORY / "fhir_codes.csv").open()):
        assert row["provenance"].strip(), row


def test_site_mapping_adds_and_overrides(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    with (site / "local.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CODE_COLUMNS)
        writer.writeheader()
        writer.writerow({"source_system": "urn:oid:1.2.3.hospital", "source_code": "CTLIV", "source_display": "CT liver",
                         "registry_meaning": "imaging_ct", "domain_id": "Procedure", "target_concept_id": "0",
                         "target_vocabulary_id": "", "provenance": "site radiology code list 2024"})
    codes = load_code_map([site])
    mapping, _ = codes.lookup({"coding": [{"system": "urn:oid:1.2.3.hospital", "code": "CTLIV"}]}, "x")
    assert mapping.meaning == "imaging_ct"
    monkeypatch.setenv("DLMREG_MAPPINGS", str(site))
    assert load_code_map().meaning({"coding": [{"system": "urn:oid:1.2.3.hospital", "code": "CTLIV"}]}) == "imaging_ct"


def test_row_without_provenance_is_refused(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "bad.csv").write_text(",".join(CODE_COLUMNS) + "\nurn:x,1,d,imaging_ct,Procedure,0,,\n")
    with pytest.raises(ValueError, match="provenance"):
        load_code_map([site])


def test_unmapped_codes_are_counted_with_their_field():
    codes = load_code_map()
    mapping, source = codes.lookup({"coding": [{"system": "urn:local", "code": "XYZ"}]}, "Procedure.code")
    assert mapping is None and source == "XYZ"
    codes.lookup({"coding": [{"system": "urn:local", "code": "XYZ"}]}, "Procedure.code")
    assert codes.unmapped[("urn:local", "XYZ", "Procedure.code", "no mapping row")] == 2
    loinc = {"coding": [{"system": "http://loinc.org", "code": "21889-1"}]}  # a row with concept 0
    assert codes.lookup(loinc, "Observation.code")[0].concept_id == 0
    assert codes.unmapped[("http://loinc.org", "21889-1", "Observation.code",
                           "mapped to concept_id 0 (no verified concept)")] == 1
