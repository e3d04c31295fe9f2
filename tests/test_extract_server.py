"""Extraction from a FHIR server (the loopback test server in tests/fhir_server): REST search and Bulk
Data $export give the same registry as the file source, also with faults, incrementally, and with
SMART Backend Services; failures end with a one-line reason."""
from __future__ import annotations

import json
import socket
from datetime import date, datetime, timedelta, timezone

import pytest

from etl.cli import main
from etl.extract import ServerOptions
from etl.pipeline import RunSettings, run
from tests.fhir_server import Faults, FhirTestServer
from tests.registry_compare import assert_same_registry

ALL_FAULTS = ("429", "503", "drop", "truncate", "invalid_json", "expire_token")
# One run date for the module: registries compared here are built minutes apart, and a run on either side
# of midnight would write another NOTE_NLP.nlp_date.
TODAY = date.today()


@pytest.fixture(scope="module")
def cohort(cohort_factory):
    return cohort_factory(120, 21)


def _file_registry(source, directory) -> str:
    url = f"sqlite:///{directory / 'r.sqlite'}"
    run(RunSettings(source=str(source), registry_url=url, out_dir=directory / "out", show_progress=False,
                    today=TODAY))
    return url


@pytest.fixture(scope="module")
def file_registry(cohort, tmp_path_factory):
    return _file_registry(cohort, tmp_path_factory.mktemp("file_registry"))


@pytest.fixture(scope="module")
def large_cohort(cohort_factory, tmp_path_factory):
    """The acceptance size: 1,000 synthetic patients, and their registry loaded from files."""
    source = cohort_factory(1000, 1527)
    return source, _file_registry(source, tmp_path_factory.mktemp("large_file_registry"))


@pytest.fixture(params=["RS384", "ES384"])
def smart_client(request, monkeypatch):
    """Environment for SMART Backend Services with a fresh key; returns (client_id, public JWK)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    if request.param == "RS384":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk |= {"kid": "registry-key-1", "alg": request.param}
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    for name, value in {"DLMREG_FHIR_AUTH": "smart", "DLMREG_SMART_CLIENT_ID": "dlm-registry",
                        "DLMREG_SMART_KID": "registry-key-1", "DLMREG_SMART_ALG": request.param,
                        "DLMREG_SMART_PRIVATE_KEY": pem}.items():
        monkeypatch.setenv(name, value)
    return "dlm-registry", jwk


def _pull(server, tmp_path, name, **options):
    url = f"sqlite:///{tmp_path / f'{name}.sqlite'}"
    results = run(RunSettings(source=server.url, registry_url=url, out_dir=tmp_path / name, show_progress=False,
                              today=TODAY,
                              server=ServerOptions(**options)))
    return url, results


def _accounting_holds(results):
    r = results["run"]
    assert r["resources_read"] == r["loaded"] + r["quarantined"] + r["excluded"]


@pytest.mark.parametrize("mode", ["rest", "bulk"])
def test_pull_gives_the_same_registry_as_files(large_cohort, tmp_path, monkeypatch, mode):
    cohort, file_registry = large_cohort
    monkeypatch.setenv("DLMREG_FHIR_AUTH", "bearer")
    monkeypatch.setenv("DLMREG_FHIR_TOKEN", "test-token")
    with FhirTestServer(auth="bearer", page_size=500, export_retry_after=0) as server:
        served = server.load_ndjson_dir(cohort)
        url, results = _pull(server, tmp_path, mode, mode=mode, page_size=500)
    assert_same_registry(url, file_registry, same_source=False)
    _accounting_holds(results)
    assert results["run"]["resources_read"] == served and results["run"]["quarantined"] == 0
    extract = results["run"]["extract"]
    assert extract["incomplete"] == [] and extract["duplicates"] == 0 and extract["incremental"] is False
    # The synthetic cohort has no MedicationRequest: the export's error file says so, and that is all it says.
    expected = ["no MedicationRequest resources matched the export"] if mode == "bulk" else []
    assert extract["server_messages"] == expected


@pytest.mark.parametrize("smart_client, mode", [("RS384", "rest"), ("ES384", "bulk")], indirect=["smart_client"])
def test_pull_survives_a_fault_on_every_fifth_request(cohort, file_registry, tmp_path, smart_client, mode):
    """429 (Retry-After seconds and HTTP-date), 503, dropped connections, truncated and invalid pages and an
    expired token (the SMART token is refreshed) in rotation on every 5th request. Each extraction mode with
    one of the key types (test_smart_backend_services runs both)."""
    with FhirTestServer(auth="smart", page_size=100, export_retry_after=0, export_file_size=300) as server:
        server.register_smart_client(*smart_client)
        served = server.load_ndjson_dir(cohort)
        server.faults = Faults(every=5, kinds=ALL_FAULTS)
        url, results = _pull(server, tmp_path, mode, mode=mode)
        faulted = {entry["fault"] for entry in server.request_log if entry.get("fault")}
    assert faulted == set(ALL_FAULTS)
    assert_same_registry(url, file_registry, same_source=False)
    _accounting_holds(results)
    assert results["run"]["resources_read"] == served, "nothing lost or doubled"
    assert results["run"]["quarantined"] == 0


def _change_one_percent(server, cohort, share=0.01):
    """Update 1% of the Observations on the server (new version, flipped value); returns their ids."""
    lines = (cohort / "Observation.ndjson").read_text().splitlines()
    changed = []
    for line in lines[:: int(1 / share)]:
        resource = json.loads(line)
        if isinstance(resource.get("valueBoolean"), bool):
            resource["valueBoolean"] = not resource["valueBoolean"]
        resource.pop("meta", None)
        server.upsert(resource)
        changed.append(resource["id"])
    return changed


def _load_as_of_an_hour_ago(server, cohort) -> int:
    """Load a cohort as data written an hour ago (a burst load's stamps must not run ahead of real time)."""
    server.clock = lambda: datetime.now(timezone.utc) - timedelta(hours=1)
    served = server.load_ndjson_dir(cohort)
    server.clock = lambda: datetime.now(timezone.utc)
    return served


def test_incremental_rest_pull_fetches_only_changes(cohort, tmp_path):
    with FhirTestServer(page_size=100) as server:
        _load_as_of_an_hour_ago(server, cohort)
        url, first = _pull(server, tmp_path, "incremental", overlap_seconds=0)
        assert first["run"]["extract"]["incremental"] is False
        changed = _change_one_percent(server, cohort)
        server.clear_request_log()
        second = run(RunSettings(source=server.url, registry_url=url, out_dir=tmp_path / "second",
                                 show_progress=False, today=TODAY, server=ServerOptions(overlap_seconds=0)))
        log = list(server.request_log)
        with FhirTestServer(page_size=100) as fresh_server:  # the final data, pulled from scratch
            for entry in _snapshot(server):
                fresh_server.upsert(entry)
            fresh_url, _ = _pull(fresh_server, tmp_path, "fresh")
    searches = [e for e in log if e["method"] == "GET" and "_lastUpdated" in (e["query"] or {})]
    assert searches and all(e["path"].rsplit("/", 1)[-1] != "$export" for e in log)
    first_pages = [e for e in log if "_getpages" not in (e["query"] or {})]
    assert all("_lastUpdated" in (e["query"] or {}) for e in first_pages if e["path"].split("/")[-1][:1].isupper())
    assert second["run"]["extract"]["incremental"] is True
    assert second["run"]["resources_read"] == len(changed)
    assert second["run"]["staging_changes"]["changed"] == len(changed)
    assert_same_registry(url, fresh_url, same_source=False)


def _snapshot(server):
    """Every live resource on a test server, through its own REST API (no access to internals)."""
    import httpx

    resources = []
    with httpx.Client() as client:
        for resource_type in ("Patient", "Condition", "BodyStructure", "DiagnosticReport", "Observation",
                              "Procedure", "MedicationAdministration", "DocumentReference"):
            url, params = f"{server.url}/{resource_type}", {"_count": 1000}
            while url:
                bundle = client.get(url, params=params).json()
                resources += [e["resource"] for e in bundle.get("entry", [])]
                url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
                params = None
    return resources


def test_incremental_bulk_export_applies_changes_and_deletions(cohort, tmp_path):
    with FhirTestServer(export_retry_after=0) as server:
        _load_as_of_an_hour_ago(server, cohort)
        url, _ = _pull(server, tmp_path, "bulk", mode="bulk")
        changed = _change_one_percent(server, cohort)
        deleted = json.loads((cohort / "DocumentReference.ndjson").read_text().splitlines()[0])["id"]
        server.delete("DocumentReference", deleted)
        server.clear_request_log()
        second = run(RunSettings(source=server.url, registry_url=url, out_dir=tmp_path / "second",
                                 show_progress=False, today=TODAY, server=ServerOptions(mode="bulk")))
        kickoff = next(e for e in server.request_log if e["path"].endswith("$export"))
        with FhirTestServer() as fresh_server:
            for resource in _snapshot(server):
                fresh_server.upsert(resource)
            fresh_url, _ = _pull(fresh_server, tmp_path, "fresh")
    assert "_since" in kickoff["query"]
    assert second["run"]["resources_read"] == len(changed)
    assert second["run"]["staging_changes"]["deleted"] == 1
    assert_same_registry(url, fresh_url, same_source=False)


def test_smart_backend_services(cohort_factory, tmp_path, smart_client):
    with FhirTestServer(auth="smart", export_retry_after=0) as server:
        server.register_smart_client(*smart_client)
        served = server.load_ndjson_dir(cohort_factory(15, 2))
        _, results = _pull(server, tmp_path, "smart", mode="bulk")
        token_requests = [e for e in server.request_log if e["path"].endswith("/token")]
    assert results["run"]["resources_read"] == served and results["run"]["status"] == "published"
    assert token_requests and all(e["status"] == 200 for e in token_requests)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_line_failure(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_failures_end_with_a_one_line_reason(cohort_factory, tmp_path, capsys, monkeypatch):
    out = ["--out", str(tmp_path / "o"), "--registry", f"sqlite:///{tmp_path / 'r.sqlite'}", "--no-progress"]
    monkeypatch.setenv("DLMREG_FHIR_AUTH", "bearer")
    monkeypatch.setenv("DLMREG_FHIR_TOKEN", "wrong-token")
    with FhirTestServer(auth="bearer") as server:
        server.load_ndjson_dir(cohort_factory(5, 1))
        line = _one_line_failure(capsys, ["run", "--source", server.url, *out])
        assert "credentials" in line and "401" in line
        monkeypatch.setenv("DLMREG_FHIR_TOKEN", "test-token")
        line = _one_line_failure(capsys, ["run", "--source", server.url, "--extract", "bulk", "--bulk-level", "group",
                                          "--bulk-group", "no-such-group", *out])
        assert "404" in line and "no-such-group" in line.lower() or "group" in line.lower()
    line = _one_line_failure(capsys, ["run", "--source", f"http://127.0.0.1:{_free_port()}/fhir", *out])
    assert "unreachable" in line
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["run"]["status"] == "failed" and results["run"]["resources_read"] == 0
