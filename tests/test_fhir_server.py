"""Tests of the FHIR R4 TEST server in tests/fhir_server (paging, _lastUpdated, $export, auth, faults)."""
from __future__ import annotations

import json
import re
import ssl
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import tests.fhir_server as fhir_server_package
from tests.fhir_server import Faults, FhirTestServer

INSTANT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
UTC = timezone.utc
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female"}


def observation(oid: str, pid: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{pid}"}}


def cohort(patients: int = 5, observations: int = 137) -> list[dict]:
    out = [patient(f"p{i}") for i in range(patients)]
    out += [observation(f"o{i}", f"p{i % patients}") for i in range(observations)]
    return out


def collect(client: httpx.Client, url: str, params=None, headers=None) -> tuple[list[dict], list[str]]:
    """Follow next links; returns (resources, page URLs after the first)."""
    resources, next_urls = [], []
    response = client.get(url, params=params, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        for entry in bundle.get("entry", []):
            assert entry["search"]["mode"] == "match"
            resource = entry["resource"]
            assert entry["fullUrl"].endswith(f"/{resource['resourceType']}/{resource['id']}")
            resources.append(resource)
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return resources, next_urls
        next_urls.append(nxt[0])
        response = client.get(nxt[0], headers=headers)


def run_export(client: httpx.Client, url: str, params=None, headers=None) -> tuple[dict, list[httpx.Response]]:
    """Kick off, poll to completion; returns (manifest, the 202 poll responses)."""
    kick = client.get(url, params=params, headers={**ASYNC, **(headers or {})})
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    polls = []
    for _ in range(20):
        response = client.get(status_url, headers=headers)
        if response.status_code == 200:
            assert response.headers["Content-Type"].startswith("application/json")
            return response.json(), polls
        assert response.status_code == 202, response.text
        polls.append(response)
    raise AssertionError("export did not finish")


def download(client: httpx.Client, url: str, headers=None) -> list[dict]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/fhir+ndjson"
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def assert_outcome(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/fhir+json"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error" and issue["diagnostics"]
    if code:
        assert issue["code"] == code
    return issue


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture
def server():
    with FhirTestServer(cohort(), page_size=10, export_polls=2) as s:
        yield s


# -- basics ----------------------------------------------------------------------------------------
def test_docstrings_say_test_server_not_production():
    doc = fhir_server_package.__doc__
    assert "TEST server" in doc and "NOT for production" in doc


def test_lifecycle_url_and_metadata(client):
    s = FhirTestServer([patient("a"), observation("o", "a")])
    with pytest.raises(RuntimeError):
        _ = s.url
    with s:
        assert re.match(r"^http://127\.0\.0\.1:\d+/fhir$", s.url)
        response = client.get(f"{s.url}/metadata")
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/fhir+json"
        statement = response.json()
        assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
        assert [r["type"] for r in statement["rest"][0]["resource"]] == ["Observation", "Patient"]
        assert client.get(f"{s.url}/.well-known/smart-configuration").status_code == 404
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{s.url}/metadata", timeout=2)


def test_upsert_sets_version_and_strictly_increasing_last_updated():
    s = FhirTestServer()
    first = s.upsert(patient("a"))
    second = s.upsert({**patient("a"), "gender": "male", "meta": {"profile": ["http://x"]}})
    assert (first["meta"]["versionId"], second["meta"]["versionId"]) == ("1", "2")
    assert second["meta"]["profile"] == ["http://x"]
    stamps = [s.upsert(patient(f"b{i}"))["meta"]["lastUpdated"] for i in range(300)]
    assert all(INSTANT.match(t) for t in stamps)
    parsed = [datetime.fromisoformat(t) for t in stamps]
    assert all(a < b for a, b in zip(parsed, parsed[1:]))
    assert s.upsert({"resourceType": "Patient"})["id"]  # ids are assigned
    s.clock = lambda: datetime(2020, 1, 1, tzinfo=UTC)  # a clock behind the last stamp still moves forward
    assert datetime.fromisoformat(s.upsert(patient("c"))["meta"]["lastUpdated"]) > parsed[-1]
    fixed = FhirTestServer()
    fixed.clock = lambda: datetime(2020, 1, 1, 12, tzinfo=UTC)
    assert [fixed.upsert(patient(f"x{i}"))["meta"]["lastUpdated"] for i in range(2)] == [
        "2020-01-01T12:00:00.000+00:00", "2020-01-01T12:00:00.001+00:00"]
    with pytest.raises(ValueError):
        s.upsert({"resourceType": "NotAType", "id": "x"})


# -- search ----------------------------------------------------------------------------------------
def test_paging_follows_opaque_next_links_and_returns_every_resource_once(server, client):
    resources, next_urls = collect(client, f"{server.url}/Observation", params={"_count": 10})
    ids = [r["id"] for r in resources]
    assert sorted(ids) == sorted(f"o{i}" for i in range(137)) and len(ids) == len(set(ids))
    keys = [(r["meta"]["lastUpdated"], r["id"]) for r in resources]
    assert keys == sorted(keys)
    assert len(next_urls) == 13
    for url in next_urls:  # opaque: only a token, no offset or count
        assert re.match(rf"^{re.escape(server.url)}\?_getpages=[A-Za-z0-9_-]+$", url)
    again = client.get(next_urls[4]).json()  # tokens stay valid
    assert [e["resource"]["id"] for e in again["entry"]] == ids[50:60]
    # default page size and total that may be absent on later pages
    first = client.get(f"{server.url}/Patient").json()
    assert len(first["entry"]) == 5 and [link["relation"] for link in first["link"]] == ["self"]
    assert "total" not in again


def test_paging_is_stable_while_resources_change(server, client):
    response = client.get(f"{server.url}/Observation", params={"_count": 20})
    seen = [e["resource"]["id"] for e in response.json()["entry"]]
    server.upsert(observation(seen[0], "p1"))  # moves to the end of the sort order
    server.upsert(observation("new", "p1"))
    url = next(link["url"] for link in response.json()["link"] if link["relation"] == "next")
    rest, _ = collect(client, url)
    ids = seen + [r["id"] for r in rest]
    assert sorted(ids) == sorted(f"o{i}" for i in range(137))


def test_last_updated_filters_and_other_parameters(client):
    now = [datetime(2024, 1, 1, 8, tzinfo=UTC)]
    s = FhirTestServer()
    s.clock = lambda: now[0]
    stamps = {}
    for rid, when in (("a", datetime(2024, 1, 1, 8)), ("b", datetime(2024, 2, 1, 8)), ("c", datetime(2024, 3, 1, 8))):
        now[0] = when.replace(tzinfo=UTC)
        stamps[rid] = s.upsert(observation(rid, "p1" if rid != "c" else "p2"))["meta"]["lastUpdated"]
    s.upsert({"resourceType": "BodyStructure", "id": "bs", "patient": {"reference": "Patient/p2"}})
    with s:
        def ids(*params):
            response = client.get(f"{s.url}/Observation", params=list(params))
            assert response.status_code == 200, response.text
            return sorted(e["resource"]["id"] for e in response.json().get("entry", []))

        assert ids(("_lastUpdated", "ge2024-02-01")) == ["b", "c"]
        assert ids(("_lastUpdated", "gt2024-02-01")) == ["c"]  # after the whole day
        assert ids(("_lastUpdated", f"gt{stamps['b']}")) == ["c"]
        assert ids(("_lastUpdated", f"ge{stamps['b']}")) == ["b", "c"]
        assert ids(("_lastUpdated", "lt2024-02-01")) == ["a"]
        assert ids(("_lastUpdated", "le2024-02-01")) == ["a", "b"]
        assert ids(("_lastUpdated", "2024-02")) == ["b"]
        assert ids(("_lastUpdated", "ge2024-01-15T00:00:00Z"), ("_lastUpdated", "lt2024-02-15T00:00:00+01:00")) == ["b"]
        assert ids(("_id", "a,c")) == ["a", "c"]
        assert ids(("_id", "a,c"), ("_id", "c")) == ["c"]
        assert ids(("patient", "Patient/p1")) == ["a", "b"]
        assert ids(("patient", "p2")) == ["c"]
        assert ids(("subject", "Patient/p2")) == ["c"]
        bs = client.get(f"{s.url}/BodyStructure", params={"patient": "p2"}).json()
        assert [e["resource"]["id"] for e in bs["entry"]] == ["bs"]
        count0 = client.get(f"{s.url}/Observation", params={"_count": 0}).json()
        assert "entry" not in count0

        bad = [{"_lastUpdated": "ge2024-13-01"}, {"_lastUpdated": "sa2024-01-01"}, {"_lastUpdated": "geyesterday"},
               {"_lastUpdated": "ge2024-01-01T10:00:00"},  # a time needs a zone
               {"_count": "ten"}, {"_count": "-1"}, {"_sort": "_lastUpdated"}, {"code": "x"},
               {"_id:missing": "true"}]
        for params in bad:
            issue = assert_outcome(client.get(f"{s.url}/Observation", params=params), 400, "invalid")
            assert issue["diagnostics"]
        unencoded_plus = client.get(f"{s.url}/Observation?_lastUpdated=ge2024-01-01T10:00:00.000+00:00")
        assert "%2B" in assert_outcome(unencoded_plus, 400, "invalid")["diagnostics"]
        assert_outcome(client.get(f"{s.url}/Patient", params={"patient": "p1"}), 400, "invalid")
        assert_outcome(client.get(f"{s.url}/NotAType"), 404, "not-found")
        assert client.get(f"{s.url}/Condition").json().get("entry") is None  # valid type, nothing held
        posted = client.post(f"{s.url}/Observation/_search", data={"_id": "a"})
        assert [e["resource"]["id"] for e in posted.json()["entry"]] == ["a"]


def test_read_history_and_deletion(server, client):
    response = client.get(f"{server.url}/Patient/p1")
    assert response.status_code == 200 and response.json()["id"] == "p1"
    assert response.headers["ETag"] == 'W/"1"'
    server.upsert({**patient("p1"), "gender": "male"})
    server.delete("Patient", "p1")
    assert_outcome(client.get(f"{server.url}/Patient/p1"), 410, "deleted")
    assert_outcome(client.get(f"{server.url}/Patient/nope"), 404, "not-found")
    assert_outcome(client.get(f"{server.url}/Nope/p1"), 404, "not-found")
    assert "p1" not in [r["id"] for r in collect(client, f"{server.url}/Patient")[0]]
    history = client.get(f"{server.url}/Patient/p1/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert client.get(f"{server.url}/Patient/p1/_history/1").json()["gender"] == "female"
    assert client.get(f"{server.url}/Patient/p1/_history/3").status_code == 410
    with pytest.raises(KeyError):
        server.delete("Patient", "never")


# -- bulk data -------------------------------------------------------------------------------------
def test_export_flow_progress_manifest_and_files(client):
    resources = cohort(patients=3, observations=1205)
    with FhirTestServer(resources, export_polls=2, export_retry_after=0) as s:
        no_prefer = client.get(f"{s.url}/$export")
        assert "respond-async" in assert_outcome(no_prefer, 400, "invalid")["diagnostics"]
        assert not s._jobs
        manifest, polls = run_export(client, f"{s.url}/$export")
        assert [p.headers["X-Progress"] for p in polls] == ["in progress (1/2)", "in progress (2/2)"]
        assert all(p.headers["Retry-After"] == "0" for p in polls)
        assert INSTANT.match(manifest["transactionTime"])
        assert manifest["request"] == f"{s.url}/$export" and manifest["requiresAccessToken"] is False
        assert manifest["deleted"] == [] and manifest["error"] == []
        counts = [(o["type"], o["count"]) for o in manifest["output"]]
        assert counts == [("Observation", 1000), ("Observation", 205), ("Patient", 3)]
        exported = []
        for item in manifest["output"]:
            lines = download(client, item["url"])
            assert len(lines) == item["count"] and {r["resourceType"] for r in lines} == {item["type"]}
            exported += lines
        assert sorted(r["id"] for r in exported) == sorted(r["id"] for r in resources)
        tx = datetime.fromisoformat(manifest["transactionTime"])
        assert all(datetime.fromisoformat(r["meta"]["lastUpdated"]) <= tx for r in exported)
        # _type, and the manifest repeats on later polls
        manifest2, _ = run_export(client, f"{s.url}/$export", params={"_type": "Patient"})
        assert [o["type"] for o in manifest2["output"]] == ["Patient"]
        for params in ({"_type": "Nope"}, {"_outputFormat": "text/csv"}, {"_typeFilter": "Patient?x=y"},
                       {"_since": "yesterday"}):
            assert_outcome(client.get(f"{s.url}/$export", params=params, headers=ASYNC), 400, "invalid")
        assert client.post(f"{s.url}/$export", headers=ASYNC).status_code == 405


def test_export_since_lists_changes_and_deletions(server, client):
    first, _ = run_export(client, f"{server.url}/$export")
    since = first["transactionTime"]
    server.upsert(observation("o1", "p2"))  # updated
    server.upsert(observation("fresh", "p0"))  # created
    server.delete("Observation", "o2")
    server.delete("Patient", "p4")
    manifest, _ = run_export(client, f"{server.url}/$export", params={"_since": since})
    changed = [r for o in manifest["output"] for r in download(client, o["url"])]
    assert sorted(r["id"] for r in changed) == ["fresh", "o1"]
    deletions = {}
    for item in manifest["deleted"]:
        assert item["type"] == "Bundle"
        for bundle in download(client, item["url"]):
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
            for entry in bundle["entry"]:
                assert entry["request"]["method"] == "DELETE"
                deletions[entry["request"]["url"]] = True
    assert sorted(deletions) == ["Observation/o2", "Patient/p4"]
    later, _ = run_export(client, f"{server.url}/$export", params={"_since": manifest["transactionTime"]})
    assert later["output"] == [] and later["deleted"] == []


def test_export_cancel(server, client):
    kick = client.get(f"{server.url}/$export", headers=ASYNC)
    status_url = kick.headers["Content-Location"]
    assert client.get(status_url).status_code == 202
    assert client.delete(status_url).status_code == 202
    assert_outcome(client.get(status_url), 404, "not-found")
    assert client.delete(status_url).status_code == 404


def test_patient_and_group_export(client):
    resources = cohort(patients=4, observations=12) + [
        {"resourceType": "Medication", "id": "m1", "code": {"text": "5-FU"}},
        {"resourceType": "BodyStructure", "id": "bs1", "patient": {"reference": "Patient/p1"}},
        {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
         "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p3"}},
                    {"entity": {"reference": "Patient/ghost"}}]}]
    with FhirTestServer(resources, export_polls=0) as s:
        manifest, polls = run_export(client, f"{s.url}/Patient/$export")
        assert polls == []
        types = {o["type"] for o in manifest["output"]}
        assert types == {"Patient", "Observation", "BodyStructure"}  # no Medication or Group
        manifest, _ = run_export(client, f"{s.url}/Group/g1/$export")
        got = [r for o in manifest["output"] for r in download(client, o["url"])]
        assert sorted(r["id"] for r in got if r["resourceType"] == "Patient") == ["p1", "p3"]
        assert sorted(r["id"] for r in got if r["resourceType"] == "Observation") == [
            "o1", "o11", "o3", "o5", "o7", "o9"]
        assert "bs1" in {r["id"] for r in got}
        errors = [r for e in manifest["error"] for r in download(client, e["url"])]
        assert errors and "Patient/ghost" in errors[0]["issue"][0]["diagnostics"]
        assert_outcome(client.get(f"{s.url}/Group/nope/$export", headers=ASYNC), 404, "not-found")
        assert client.get(f"{s.url}/Observation/$export", headers=ASYNC).status_code == 404


def test_load_ndjson_dir_from_synth(tmp_path, client):
    from etl.synth.writer import write_cohort

    summary = write_cohort(tmp_path, patients=2, seed=7)
    s = FhirTestServer(export_polls=0)
    assert s.load_ndjson_dir(tmp_path) == sum(summary["resources"].values())
    with s:
        manifest, _ = run_export(client, f"{s.url}/Patient/$export")
        counts = {}
        for o in manifest["output"]:
            counts[o["type"]] = counts.get(o["type"], 0) + o["count"]
        assert counts == {t: n for t, n in summary["resources"].items() if n}


# -- auth ------------------------------------------------------------------------------------------
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())


def public_jwk(key, kid: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}


def assertion(server: FhirTestServer, *, key=RSA_KEY, kid="k1", alg="RS384", client_id="registry", aud=None,
              exp_in: float = 240, jti: str | None = None) -> str:
    now = server.clock().timestamp()
    claims = {"iss": client_id, "sub": client_id, "aud": aud or server.token_url, "exp": int(now + exp_in),
              "jti": jti or uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def token_request(client, server, scope="system/*.read", **kw) -> httpx.Response:
    return client.post(server.token_url, data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": kw.pop("signed", None) or assertion(server, **kw)})


def bearer(client, server, scope="system/*.read") -> dict:
    response = token_request(client, server, scope)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def smart():
    with FhirTestServer(cohort(patients=3, observations=25), auth="smart", page_size=10, export_polls=1,
                        token_lifetime=300) as s:
        s.register_smart_client("registry", public_jwk(RSA_KEY, "k1"))
        s.register_smart_client("registry", public_jwk(EC_KEY, "k2"))
        yield s


def test_smart_configuration_and_capability(smart, client):
    config = client.get(f"{smart.url}/.well-known/smart-configuration").json()
    assert config["token_endpoint"] == f"{smart.url}/token"
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert config["grant_types_supported"] == ["client_credentials"]
    assert "system/*.read" in config["scopes_supported"]
    security = client.get(f"{smart.url}/metadata").json()["rest"][0]["security"]
    assert security["extension"][0]["extension"][0]["valueUri"] == smart.token_url


def test_smart_token_flow_and_assertion_checks(smart, client):
    unauthorized = client.get(f"{smart.url}/Patient")
    issue = assert_outcome(unauthorized, 401, "login")
    assert issue["diagnostics"] == "invalid or expired token"
    assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer")

    signed = assertion(smart)
    response = token_request(client, smart, signed=signed)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300 and body["scope"] == "system/*.read"
    assert response.headers["Cache-Control"] == "no-store"
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    resources, _ = collect(client, f"{smart.url}/Observation", headers=auth)
    assert len(resources) == 25

    def rejected(response, status=401, error="invalid_client"):
        assert response.status_code == status, response.text
        assert response.json()["error"] == error

    rejected(token_request(client, smart, signed=signed))  # replayed jti
    rejected(token_request(client, smart, aud=f"{smart.url}/other-token"))
    rejected(token_request(client, smart, exp_in=-10))  # expired assertion
    rejected(token_request(client, smart, exp_in=600))  # more than 5 minutes ahead
    rejected(token_request(client, smart, kid="unknown"))
    rejected(token_request(client, smart, client_id="stranger"))
    rejected(token_request(client, smart, key=EC_KEY, kid="k1", alg="ES384"))  # alg does not match the key
    rejected(token_request(client, smart, signed=jwt.encode(
        {"iss": "registry", "sub": "registry", "aud": smart.token_url, "exp": int(time.time()) + 60, "jti": "h"},
        "secret-secret-secret-secret-secret", algorithm="HS256", headers={"kid": "k1"})))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rejected(token_request(client, smart, key=other))  # bad signature
    rejected(token_request(client, smart, scope="user/*.read"), 400, "invalid_scope")
    bad_grant = client.post(smart.token_url, data={"grant_type": "password"})
    rejected(bad_grant, 400, "unsupported_grant_type")
    es = token_request(client, smart, key=EC_KEY, kid="k2", alg="ES384")
    assert es.status_code == 200, es.text
    wrong = client.get(f"{smart.url}/Patient", headers={"Authorization": "Bearer nope"})
    assert_outcome(wrong, 401, "login")
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]


def test_smart_access_token_expires(smart, client):
    auth = bearer(client, smart)
    assert client.get(f"{smart.url}/Patient/p1", headers=auth).status_code == 200
    later = datetime.now(UTC) + timedelta(seconds=301)
    smart.clock = lambda: later
    expired = client.get(f"{smart.url}/Patient/p1", headers=auth)
    assert assert_outcome(expired, 401, "login")["diagnostics"] == "invalid or expired token"
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert client.get(f"{smart.url}/Patient/p1", headers=bearer(client, smart)).status_code == 200


def test_smart_scopes(smart, client):
    observation_only = bearer(client, smart, "system/Observation.read")
    assert client.get(f"{smart.url}/Observation", headers=observation_only).status_code == 200
    assert_outcome(client.get(f"{smart.url}/Patient", headers=observation_only), 403, "forbidden")
    assert_outcome(client.get(f"{smart.url}/Patient/p1", headers=observation_only), 403, "forbidden")
    v2 = bearer(client, smart, "system/*.rs")
    assert client.get(f"{smart.url}/Patient/p1", headers=v2).status_code == 200
    search_only = bearer(client, smart, "system/Patient.s")
    assert client.get(f"{smart.url}/Patient", headers=search_only).status_code == 200
    assert_outcome(client.get(f"{smart.url}/Patient/p1", headers=search_only), 403, "forbidden")
    response = token_request(client, smart, "system/Patient.read launch openid")
    assert response.json()["scope"] == "system/Patient.read"  # unsupported scopes are not granted
    # export: explicit types must be permitted; without _type only permitted types are exported
    assert_outcome(client.get(f"{smart.url}/$export", params={"_type": "Patient"},
                              headers={**ASYNC, **observation_only}), 403, "forbidden")
    manifest, _ = run_export(client, f"{smart.url}/$export", headers=observation_only)
    assert {o["type"] for o in manifest["output"]} == {"Observation"}
    note = download(client, manifest["error"][0]["url"], headers=observation_only)[0]
    assert "Patient" in note["issue"][0]["diagnostics"]


def test_smart_export_requires_access_token(smart, client):
    auth = bearer(client, smart)
    assert client.get(f"{smart.url}/$export", headers=ASYNC).status_code == 401
    manifest, polls = run_export(client, f"{smart.url}/$export", headers=auth)
    assert len(polls) == 1 and manifest["requiresAccessToken"] is True
    url = manifest["output"][0]["url"]
    assert_outcome(client.get(url), 401, "login")
    assert len(download(client, url, headers=auth)) == manifest["output"][0]["count"]


@pytest.mark.parametrize("mode", ["bearer", "basic"])
def test_bearer_and_basic_auth(mode, client):
    with FhirTestServer(cohort(2, 3), auth=mode, bearer_token="s3cret", basic=("reg", "pw")) as s:
        good = {"Authorization": "Bearer s3cret"} if mode == "bearer" else None
        basic_good = ("reg", "pw") if mode == "basic" else None
        assert client.get(f"{s.url}/metadata").status_code == 200  # no credentials needed
        missing = client.get(f"{s.url}/Patient")
        assert_outcome(missing, 401, "login")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer" if mode == "bearer" else "Basic")
        wrong = client.get(f"{s.url}/Patient", headers={"Authorization": "Bearer nope"}, auth=("reg", "no")
                           if mode == "basic" else None)
        assert_outcome(wrong, 401, "login")
        ok = client.get(f"{s.url}/Patient", headers=good, auth=basic_good)
        assert ok.status_code == 200 and len(ok.json()["entry"]) == 2
        manifest, _ = run_export(client, f"{s.url}/$export", headers=good or {
            "Authorization": httpx.BasicAuth("reg", "pw")._auth_header})
        assert manifest["requiresAccessToken"] is True
        assert client.get(manifest["output"][0]["url"]).status_code == 401
        assert client.get(manifest["output"][0]["url"], headers=good, auth=basic_good).status_code == 200
        assert [e["auth"] for e in s.request_log[1:3]] == [False, True]


# -- faults ----------------------------------------------------------------------------------------
def test_faults_every_nth_request_in_rotation(server, client):
    server.faults = Faults(every=3, kinds=("503", "429"))
    statuses = [client.get(f"{server.url}/metadata").status_code for _ in range(9)]
    assert statuses == [200, 200, 503, 200, 200, 429, 200, 200, 503]
    assert [e["fault"] for e in server.request_log] == [None, None, "503", None, None, "429", None, None, "503"]
    server.faults = Faults()
    assert all(client.get(f"{server.url}/metadata").status_code == 200 for _ in range(4))
    with pytest.raises(ValueError):
        Faults(every=2, kinds=("teapot",))


def test_fault_429_retry_after_seconds_then_http_date(server, client):
    server.faults = Faults(every=1, kinds=("429",))
    first, second, third = (client.get(f"{server.url}/Patient") for _ in range(3))
    assert_outcome(first, 429, "throttled")
    assert first.headers["Retry-After"] == "1" and third.headers["Retry-After"] == "1"
    assert second.status_code == 429
    delay = (parsedate_to_datetime(second.headers["Retry-After"]) - datetime.now(UTC)).total_seconds()
    assert 0 < delay <= 2


def test_fault_503(server, client):
    server.faults = Faults(every=1, kinds=("503",), limit=1)
    assert_outcome(client.get(f"{server.url}/Patient"), 503, "transient")
    assert client.get(f"{server.url}/Patient").status_code == 200  # limit reached


def test_fault_drop(server, client):
    server.faults = Faults(every=2, kinds=("drop",))
    assert client.get(f"{server.url}/Patient").status_code == 200
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{server.url}/Patient")
    assert client.get(f"{server.url}/Patient").status_code == 200
    assert [e["status"] for e in server.request_log] == [200, None, 200]


def test_fault_truncate(server, client):
    full = client.get(f"{server.url}/Observation").content
    server.faults = Faults(every=1, kinds=("truncate",), limit=1)
    with client.stream("GET", f"{server.url}/Observation") as response:
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(full)
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
    assert client.get(f"{server.url}/Observation").status_code == 200


def test_fault_invalid_json(server, client):
    server.faults = Faults(every=1, kinds=("invalid_json",), limit=1)
    response = client.get(f"{server.url}/Patient")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_fault_expire_token_then_retry(smart, client):
    auth = bearer(client, smart)
    smart.faults = Faults(every=1, kinds=("expire_token",), limit=1)
    response = client.get(f"{smart.url}/Patient", headers=auth)
    assert assert_outcome(response, 401, "login")["diagnostics"] == "invalid or expired token"
    assert "invalid_token" in response.headers["WWW-Authenticate"]
    assert client.get(f"{smart.url}/Patient", headers=bearer(client, smart)).status_code == 200


def test_faulted_requests_have_no_side_effect(server, smart, client):
    # a faulted page does not advance anything: retrying the same next link gives the same page
    first = client.get(f"{server.url}/Observation", params={"_count": 50}).json()
    next_url = first["link"][1]["url"]
    server.faults = Faults(every=1, kinds=("503", "drop", "truncate", "invalid_json"), limit=4)
    for _ in range(4):
        try:
            response = client.get(next_url)
            assert response.status_code != 200 or not response.content.startswith(b"{")
        except httpx.TransportError:
            pass
    page = client.get(next_url).json()
    assert [e["resource"]["id"] for e in page["entry"]] == [
        r["id"] for r in collect(client, f"{server.url}/Observation", {"_count": 50})[0][50:100]]
    # a faulted kick-off creates no job; a faulted poll is not counted
    server.faults = Faults(every=1, kinds=("503",), limit=1)
    assert client.get(f"{server.url}/$export", headers=ASYNC).status_code == 503
    assert not server._jobs
    status_url = client.get(f"{server.url}/$export", headers=ASYNC).headers["Content-Location"]
    server.faults = Faults(every=2, kinds=("503",))
    seen = [(r.status_code, r.headers.get("X-Progress")) for r in (client.get(status_url) for _ in range(5))]
    assert seen == [(202, "in progress (1/2)"), (503, None), (202, "in progress (2/2)"), (503, None), (200, None)]
    # a faulted token request does not burn the assertion's jti
    signed = assertion(smart)
    smart.faults = Faults(every=1, kinds=("429",), limit=1)
    assert token_request(client, smart, signed=signed).status_code == 429
    assert token_request(client, smart, signed=signed).status_code == 200


# -- log, TLS, threads -----------------------------------------------------------------------------
def test_request_log(server, client):
    client.get(f"{server.url}/Observation", params=[("_lastUpdated", "ge2000-01-01"),
                                                    ("_lastUpdated", "lt2100-01-01"), ("_count", "5")])
    client.get(f"{server.url}/Patient/nope", headers={"Authorization": "Bearer x"})
    log = server.request_log
    assert log[0] == {"method": "GET", "path": "/fhir/Observation", "status": 200, "auth": False, "fault": None,
                      "query": {"_lastUpdated": ["ge2000-01-01", "lt2100-01-01"], "_count": "5"}}
    assert (log[1]["path"], log[1]["status"], log[1]["auth"]) == ("/fhir/Patient/nope", 404, True)
    server.clear_request_log()
    assert server.request_log == []


def test_tls(client):
    with FhirTestServer([patient("a")], tls=True) as s:
        assert s.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=s.ca_file)
        with httpx.Client(verify=context) as tls_client:
            assert tls_client.get(f"{s.url}/Patient/a").json()["id"] == "a"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{s.url}/metadata")  # not trusted by default


def test_concurrent_clients(server):
    errors, results = [], []

    def worker(i):
        try:
            with httpx.Client(timeout=10) as c:
                resources, _ = collect(c, f"{server.url}/Observation", {"_count": 7})
                results.append(sorted(r["id"] for r in resources))
                server.upsert(observation(f"t{i}", "p0"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(set(r) >= {f"o{i}" for i in range(137)} and len(r) == len(set(r)) for r in results)
    log = server.request_log
    # one request per page of 7: a client that found a multiple of 7 (140 once three others had added theirs)
    # has no partial last page
    assert len(log) == sum(-(-len(r) // 7) for r in results) and all(e["status"] == 200 for e in log)
