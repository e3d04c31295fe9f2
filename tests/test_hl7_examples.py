"""Interoperability with the official HL7 FHIR R4 examples (npm package `hl7.fhir.r4.examples` 4.0.1):
served through the loopback test server and read as files, every example is accounted for, none
crashes the run, and the resources of a patient made part of the cohort are loaded and mapped."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from etl.extract import ServerOptions
from etl.pipeline import RunSettings, run
from etl.transform import SUPPORTED_TYPES
from tests.fhir_server import FhirTestServer

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
CACHE = Path(os.environ.get("DLMREG_TEST_CACHE", Path.home() / ".cache" / "dlmreg-tests"))


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    """The package's example resources (downloaded once with `npm pack` into the test cache)."""
    target = CACHE / "hl7.fhir.r4.examples-4.0.1"
    if not target.exists():
        if not shutil.which("npm"):
            pytest.skip("npm is not installed: cannot fetch hl7.fhir.r4.examples")
        CACHE.mkdir(parents=True, exist_ok=True)
        packed = subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(CACHE)], capture_output=True,
                                text=True, timeout=300)
        if packed.returncode != 0:
            pytest.skip(f"npm pack {PACKAGE} failed: {packed.stderr.strip().splitlines()[-1:]}")
        with tarfile.open(CACHE / packed.stdout.strip().splitlines()[-1]) as archive:
            archive.extractall(target, filter="data")
    resources = []
    for path in sorted((target / "package").glob("*.json")):
        if path.name.startswith(("package", ".")):
            continue
        resource = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(resource, dict) and "resourceType" in resource and "id" in resource:
            resources.append(resource)
    assert len(resources) > 3000
    return resources


def _cohort_entry() -> dict:
    """A liver-metastasis Condition for Patient/example, so the examples about that patient are loaded."""
    return {"resourceType": "Condition", "id": "dlm-liver-metastasis", "subject": {"reference": "Patient/example"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "94381002"}]},
            "onsetDateTime": "2015-01-01"}


def test_examples_pulled_by_rest_are_all_accounted_for(examples, tmp_path):
    served = [r for r in examples if r["resourceType"] in SUPPORTED_TYPES] + [_cohort_entry()]
    with FhirTestServer(page_size=100) as server:
        for resource in served:
            server.upsert(resource)
        results = run(RunSettings(source=server.url, registry_url=f"sqlite:///{tmp_path / 'r.sqlite'}",
                                  out_dir=tmp_path / "out", show_progress=False, server=ServerOptions()))
    r = results["run"]
    assert r["resources_read"] == len(served)
    assert r["resources_read"] == r["loaded"] + r["quarantined"] + r["excluded"]
    assert r["loaded"] >= 10, "Patient/example and its examples are in the cohort and loaded"
    assert r["rows"]["person"] == 1 and r["rows"]["observation"] + r["rows"]["measurement"] > 0
    assert r["quarantined_by_reason"]["belongs to a quarantined Patient"] > 0
    # The examples' BodyStructures (fetus, forearm skin patch, splenic tumour) are not liver lesions.
    assert r["warnings"]["BodyStructure outside the liver (not a lesion)"] == 3 and r["rows"]["dlm_lesion"] == 0
    assert r["excluded_by_reason"]["patient not in cohort"] > 20
    assert results["run"]["status"] == "published"


def test_examples_read_as_files_are_all_accounted_for(examples, tmp_path):
    source = tmp_path / "examples"
    source.mkdir()
    for resource in examples + [_cohort_entry()]:
        (source / f"{resource['resourceType']}-{resource['id']}.json").write_text(json.dumps(resource))
    results = run(RunSettings(source=str(source), registry_url=f"sqlite:///{tmp_path / 'r.sqlite'}",
                              out_dir=tmp_path / "out", show_progress=False))
    r = results["run"]
    assert r["resources_read"] == r["loaded"] + r["quarantined"] + r["excluded"]
    assert r["resources_read"] >= len(examples) + 1
    assert r["excluded_by_reason"]["resource type not used by the registry"] > 1000
