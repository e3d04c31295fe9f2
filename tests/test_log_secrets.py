"""No PHI and no secret in any log line or output of a full run (issue #10, transport and secrets).

A whole `dlmreg --verbose run` reads the synthetic cohort from the FHIR test server over loopback HTTP
with credentials, in its own process, so every log line it writes (DEBUG included, all loggers) is
captured. The run's stdout and stderr, every file it writes (results, report, dashboard, Data Docs,
unmapped codes) and the registry database itself are scanned for the patients' names, MRNs, cities and
FHIR ids, the pseudonym key and the server credentials.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.fhir_server import FhirTestServer

PSEUDONYM_KEY = "k3y-0f-the-s1te-Zq8w"   # noqa: S105 - test secrets, chosen to be unmistakable
TOKEN = "t0ken-Xy7-secret-bearer"       # noqa: S105
PASSWORD = "pa55-Wd9-secret-basic"      # noqa: S105
USERNAME = "svc-user-Hj4"


def _resources(source):
    return [json.loads(line) for path in sorted(source.glob("*.ndjson"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _phi(resources) -> set[str]:
    found = set()
    for patient in (r for r in resources if r["resourceType"] == "Patient"):
        found.add(patient["id"])
        found.update(i["value"] for i in patient.get("identifier", []))
        for name in patient.get("name", []):
            found.add(name["family"])
            found.add(" ".join(name.get("given", []) + [name["family"]]))
        found.update(a["city"] for a in patient.get("address", []) if a.get("city"))
        found.update(t["value"] for t in patient.get("telecom", []))
    return {value for value in found if len(value) > 3}


def _written(directory) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


@pytest.mark.parametrize("auth", ["bearer", "basic"])
def test_a_full_run_logs_and_writes_no_phi_and_no_secret(cohort_factory, tmp_path, auth):
    source = cohort_factory(30, 4)
    resources = _resources(source)
    out, registry = tmp_path / "out", tmp_path / "registry.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLMREG_FHIR", "DLMREG_SMART"))}
    env.update(DLMREG_PSEUDONYM_KEY=PSEUDONYM_KEY, DLMREG_FHIR_AUTH=auth, PYTHONPATH=str(REPO), DLMREG_DATA_DOCS="on")
    credentials = {"bearer": {"DLMREG_FHIR_TOKEN": TOKEN},
                   "basic": {"DLMREG_FHIR_USERNAME": USERNAME, "DLMREG_FHIR_PASSWORD": PASSWORD}}[auth]
    env.update(credentials)
    server_auth = {"bearer_token": TOKEN} if auth == "bearer" else {"basic": (USERNAME, PASSWORD)}
    with FhirTestServer(resources, auth=auth, page_size=40, **server_auth) as server:
        done = subprocess.run(
            [sys.executable, "-m", "etl.cli", "--verbose", "run", "--source", server.url, "--registry",
             f"sqlite:///{registry}", "--out", str(out), "--no-progress"],
            capture_output=True, text=True, env=env, timeout=600, check=False)
        authorised = [r for r in server.request_log if r["path"].endswith("/Patient")]
    assert done.returncode == 0, done.stderr[-3000:]
    assert authorised, "the run never searched the server"
    logs = done.stdout + done.stderr
    assert "DEBUG" in logs and len(logs.splitlines()) > 20   # the scan sees real, verbose output

    secrets = {PSEUDONYM_KEY, *credentials.values()}
    phi = _phi(resources)
    assert len(phi) > 60
    assert (out / "data_docs" / "index.html").exists()  # scanned with the other outputs
    outputs = _written(out)
    stored = registry.read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("registry.sqlite-*") if p.is_file())
    assert [s for s in secrets | phi if s in logs] == []
    assert [s for s in secrets | phi if s.encode() in outputs] == []
    assert [s for s in secrets | phi if s.encode() in stored] == []
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["resources_read"] == len(resources)
