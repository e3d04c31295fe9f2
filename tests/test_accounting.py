"""Every resource read is accounted for (read = loaded + quarantined + excluded), bad input is
quarantined with its reason, real Bulk Data file names and Bundles are read, and no direct identifier
reaches the registry."""
from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa

from etl.pipeline import RunSettings, run
from etl.registry import open_registry


@pytest.fixture
def messy_source(cohort_factory, tmp_path):
    """A synthetic cohort laid out like a real $export, with planted faults."""
    clean = cohort_factory(30, 3, non_cohort_share=0.2)
    source = tmp_path / "export"
    source.mkdir()
    shutil.copy(clean / "Patient.ndjson", source / "Patient.000.ndjson")
    for name in ("Condition", "BodyStructure", "Procedure", "MedicationAdministration", "DiagnosticReport",
                 "DocumentReference"):
        shutil.copy(clean / f"{name}.ndjson", source / f"{name}.000.ndjson")
    observations = (clean / "Observation.ndjson").read_text().splitlines()
    half = len(observations) // 2
    (source / "Observation.000.ndjson").write_text("\n".join(observations[:half]) + "\n")
    patient = json.loads(observations[0])["subject"]["reference"]
    duplicate = observations[0]
    orphan = json.loads(observations[1]) | {"id": "orphan-1", "subject": {"reference": "Patient/nobody"}}
    no_id = {k: v for k, v in json.loads(observations[2]).items() if k != "id"}
    invalid = json.loads(observations[3]) | {"id": "bad-status", "status": 42}
    lines = observations[half:] + [duplicate, json.dumps(orphan), json.dumps(no_id), json.dumps(invalid),
                                   "{not json", json.dumps({"resourceType": "Condition", "id": "wrong-file"})]
    with (source / "Observation.001.ndjson").open("wb") as handle:
        handle.write(("\n".join(lines) + "\n").encode())
        handle.write(b'{"resourceType":"Observation","id":"latin1","note":[{"text":"caf\xe9"}]}\n')
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Practitioner", "id": "dr-1"}},
        {"resource": {"resourceType": "NotAType", "id": "x"}},
        {"resource": {"resourceType": "Patient", "id": "no-birth", "gender": "female"}},
        {"resource": {"resourceType": "Observation", "id": "bundle-obs", "status": "final",
                      "code": {"text": "free text only"}, "subject": {"reference": patient},
                      "effectiveDateTime": "2020-01-01", "valueString": "yes"}},
    ]}
    (source / "extra.json").write_text(json.dumps(bundle))
    return source, clean


@pytest.mark.parametrize("workers", [0, 2])
def test_every_resource_is_accounted_for(messy_source, tmp_path, workers, monkeypatch):
    """The same accounting whether the run validates resources itself or in worker processes."""
    monkeypatch.setattr("etl.stage.parse.CHUNK_RECORDS", 50)     # several chunks, so workers start
    source, clean = messy_source
    results = run(RunSettings(source=str(source), registry_url=f"sqlite:///{tmp_path / 'r.sqlite'}",
                              out_dir=tmp_path / "out", show_progress=False, workers=workers))
    r = results["run"]
    clean_lines = sum(len(p.read_text().splitlines()) for p in clean.glob("*.ndjson"))
    assert r["resources_read"] == clean_lines + 7 + 4
    assert r["resources_read"] == r["loaded"] + r["quarantined"] + r["excluded"]
    assert r["quarantined_by_reason"] == {
        "invalid Observation": 1, "missing id": 1, "not UTF-8": 1, "not valid JSON": 1,
        "reference to a patient not in the source": 1, "resourceType Condition in a file of Observation": 1,
        "unknown resourceType NotAType": 1, "Patient without birthDate": 1}
    assert r["excluded_by_reason"]["duplicate resource id"] == 1
    assert r["excluded_by_reason"]["resource type not used by the registry"] == 1
    assert r["excluded_by_reason"]["patient not in cohort"] > 0
    registry = open_registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    with registry.engine.connect() as conn:
        quarantine = conn.execute(sa.select(registry.tables["dlm_quarantine"])).mappings().all()
        staged = conn.execute(sa.select(sa.func.count()).select_from(registry.tables["fhir_resource"])).scalar()
    assert len(quarantine) == r["quarantined"]
    assert all(q["reason"] and q["location"] and len(q["sha256"]) == 64 for q in quarantine)
    by_reason = {q["reason"].split(":")[0]: q for q in quarantine}
    assert by_reason["not valid JSON"]["raw_text"] is None  # cannot be cleaned: hash only
    orphan = json.loads(by_reason["reference to a patient not in the source"]["raw_text"])
    assert orphan["id"] == "orphan-1" and orphan["subject"]["reference"] != "Patient/nobody"  # pseudonymised
    assert {q["location"] for q in quarantine} >= {"Observation.001.ndjson:%d" % (len(
        (source / "Observation.001.ndjson").read_bytes().splitlines()))}
    assert staged == r["loaded"]
    assert results["run"]["status"] == "published"
    unmapped = (tmp_path / "out" / "unmapped_codes.csv").read_text()
    assert "free text only" in unmapped


def test_no_direct_identifier_reaches_the_registry(messy_source, tmp_path):
    source, clean = messy_source
    run(RunSettings(source=str(source), registry_url=f"sqlite:///{tmp_path / 'r.sqlite'}",
                    out_dir=tmp_path / "out", show_progress=False))
    secrets = set()
    for line in (clean / "Patient.ndjson").read_text().splitlines():
        patient = json.loads(line)
        secrets.add(patient["id"])
        secrets.update(i["value"] for i in patient.get("identifier", []))
        for name in patient.get("name", []):
            secrets.add(name["family"])
    stored = (tmp_path / "r.sqlite").read_bytes()
    wal = tmp_path / "r.sqlite-wal"
    stored += wal.read_bytes() if wal.exists() else b""
    outputs = b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file())
    leaked = sorted(s for s in secrets if len(s) > 3 and (s.encode() in stored or s.encode() in outputs))
    assert leaked == []
