"""FHIR HTTP extraction client (REST search, Bulk $export, auth, retries) against httpx.MockTransport servers."""
from __future__ import annotations

import email.utils
import json
from datetime import datetime, timezone
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from etl.extract.auth import BasicAuth, BearerAuth, NoAuth, SmartBackendAuth, auth_from_env
from etl.extract.bulk import BulkSource
from etl.extract.errors import AuthError, ExtractError, ServerError, UnreachableError
from etl.extract.http import FhirHttp, retry_after_seconds
from etl.extract.rest import RestSource

BASE = "https://fhir.test/fhir"
DATE = "Sat, 01 Jun 2024 08:00:00 GMT"
DATE_TS = datetime(2024, 6, 1, 8, 0, tzinfo=timezone.utc).timestamp()


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_http(handler, auth=None, **kw) -> tuple[FhirHttp, Sleeps]:
    sleeps = Sleeps()
    kw.setdefault("seed", 7)
    return FhirHttp(BASE, auth, transport=httpx.MockTransport(handler), sleep=sleeps, **kw), sleeps


def res(rtype: str, rid: str, version: str = "1", **extra) -> dict:
    return {"resourceType": rtype, "id": rid, "meta": {"versionId": version}, **extra}


def bundle(resources, next_url=None, total=None, outcome=None) -> dict:
    body = {"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "self", "url": "ignored"}]}
    if total is not None:
        body["total"] = total
    if next_url:
        body["link"].append({"relation": "next", "url": next_url})
    body["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    if outcome:
        body["entry"].append({"resource": oo(outcome, "warning"), "search": {"mode": "outcome"}})
    return body


def oo(diagnostics: str, severity: str = "error") -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": "processing", "diagnostics": diagnostics}]}


def fhir(status: int, body, headers=None) -> httpx.Response:
    return httpx.Response(status, json=body, headers={"Content-Type": "application/fhir+json", **(headers or {})})


class Truncated(httpx.SyncByteStream):
    """A body that stops half way (the server closed the connection)."""

    def __init__(self, data: bytes, keep: int | None = None):
        self.data, self.keep = data, len(data) // 2 if keep is None else keep

    def __iter__(self):
        yield self.data[:self.keep]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def truncated(data: bytes, keep: int | None = None, content_type="application/fhir+json") -> httpx.Response:
    return httpx.Response(200, stream=Truncated(data, keep),
                          headers={"Content-Length": str(len(data)), "Content-Type": content_type})


# -- REST search -------------------------------------------------------------------------------------
def test_paging_follows_opaque_next_links_ignores_total_and_deduplicates():
    page2 = "https://fhir.test/fhir?_getpages=Zx9-q_&_bundletype=searchset"
    page3 = "https://fhir.test/fhir/paging/abc?token=k1.2"
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        if request.url.path == "/fhir/Patient":
            # total claims 1 resource: the client must follow next anyway
            return fhir(200, bundle([res("Patient", "p1"), res("Patient", "p2")], page2, total=1),
                        {"Date": DATE})
        if str(request.url) == page2:
            # p2 v1 again (the result set shifted), p2 v2 is a new version: yielded
            return fhir(200, bundle([res("Patient", "p2"), res("Patient", "p3"), res("Patient", "p2", "2")],
                                    page3, total=999, outcome="search took long"),
                        {"Date": "Sat, 01 Jun 2024 08:00:05 GMT"})
        if str(request.url) == page3:
            return fhir(200, bundle([]))
        if request.url.path == "/fhir/Observation":
            return fhir(200, bundle([res("Observation", "o1")]))
        raise AssertionError(f"unexpected request {request.url}")

    http, _ = make_http(handler)
    source = RestSource(BASE, http, ("Patient", "Condition", "Observation"), page_size=2)
    assert source.is_snapshot and source.describe() == "fhir-rest:https://fhir.test/fhir"
    records = list(source.records(types={"Patient"}))
    assert [(json.loads(r.text)["id"], json.loads(r.text)["meta"]["versionId"]) for r in records] == \
        [("p1", "1"), ("p2", "1"), ("p3", "1"), ("p2", "2")]
    assert {r.expected_type for r in records} == {"Patient"}
    assert records[0].location == "Patient search page 1 entry 0"
    assert records[3].location == "Patient search page 2 entry 2"
    assert source.duplicates == 1 and source.warnings == ["search took long"]
    assert requests[0] == "https://fhir.test/fhir/Patient?_count=2"
    assert requests[1:] == [page2, page3]          # the next links exactly as given, nothing built
    assert source.new_state() == {"Patient": "2024-06-01T08:00:00Z"}   # the first response's Date
    # exclude: Patient and Condition are not read again; only requested types are ever searched
    requests.clear()
    assert [json.loads(r.text)["id"] for r in source.records(exclude={"Patient", "Condition"})] == ["o1"]
    assert requests == ["https://fhir.test/fhir/Observation?_count=2"]
    assert set(source.new_state()) == {"Patient", "Observation"} and not source.incomplete


def test_since_with_overlap_goes_into_the_query_and_local_clock_without_date_header():
    seen = {}

    def handler(request):
        seen[request.url.path] = dict(request.url.params)
        return fhir(200, bundle([]))

    http, _ = make_http(handler)
    clock = datetime(2024, 7, 1, 9, 30, 15, 123456, tzinfo=timezone.utc)
    source = RestSource(BASE, http, ("Patient", "Observation"), page_size=50, overlap_seconds=300,
                        since={"Observation": "2024-05-01T12:00:00Z", "Procedure": "2024-01-01T00:00:00Z"},
                        now=lambda: clock)
    assert not source.is_snapshot
    assert list(source.records()) == []
    assert seen["/fhir/Observation"] == {"_count": "50", "_lastUpdated": "ge2024-05-01T11:55:00Z"}
    assert seen["/fhir/Patient"] == {"_count": "50"}     # no watermark for Patient: everything
    assert "/fhir/Procedure" not in seen                  # not a requested type
    assert source.new_state() == {"Patient": "2024-07-01T09:30:15Z", "Observation": "2024-07-01T09:30:15Z"}
    with pytest.raises(ExtractError, match="watermark for Observation"):
        RestSource(BASE, http, ("Observation",), since={"Observation": "yesterday"})


def test_invalid_json_page_is_retried_then_quarantined_and_the_type_is_incomplete():
    calls = {"bad": 0, "flaky": 0}
    page2 = f"{BASE}?_getpages=two"

    def handler(request):
        if request.url.path == "/fhir/Observation":
            return fhir(200, bundle([res("Observation", "o1")], page2), {"Date": DATE})
        if str(request.url) == page2:
            calls["bad"] += 1
            return httpx.Response(200, content=b"<html>502 Bad Gateway</html>",
                                  headers={"Content-Type": "application/fhir+json"})
        if request.url.path == "/fhir/Patient":
            calls["flaky"] += 1
            if calls["flaky"] == 1:
                return httpx.Response(200, content=b"{\"resourceType\": \"Bun")
            return fhir(200, bundle([res("Patient", "p1")]), {"Date": DATE})
        if request.url.path == "/fhir/Condition":
            return fhir(200, oo("not a bundle"))
        raise AssertionError(request.url)

    http, sleeps = make_http(handler)
    source = RestSource(BASE, http, ("Patient", "Observation", "Condition"))
    records = list(source.records())
    good = [r for r in records if not r.expected_type.startswith("!")]
    bad = [r for r in records if r.expected_type.startswith("!")]
    assert [json.loads(r.text)["id"] for r in good] == ["p1", "o1"]     # one bad page of Patient recovered
    assert bad[0].expected_type.startswith("!search page is not valid JSON")
    assert bad[0].location == "Observation search page 2" and bad[0].text.startswith("<html>")
    assert bad[1].expected_type == "!search page is not a Bundle (OperationOutcome)"
    assert calls["bad"] == 3 and http.stats["retry:invalid_json"] == 3
    assert source.incomplete == {"Observation", "Condition"}
    assert source.new_state() == {"Patient": "2024-06-01T08:00:00Z"}
    assert len(sleeps) == 3


def test_next_link_to_another_server_or_a_loop_is_not_followed():
    def handler(request):
        if request.url.path == "/fhir/Patient":
            return fhir(200, bundle([res("Patient", "p1")], "https://evil.test/steal?page=2"))
        if request.url.path == "/fhir/Condition":
            return fhir(200, bundle([res("Condition", "c1")], "/fhir/Condition"))   # relative, to itself
        raise AssertionError(f"followed {request.url}")

    http, _ = make_http(handler, auth=BearerAuth("secret"))
    source = RestSource(BASE, http, ("Patient", "Condition"))
    records = list(source.records())
    assert [r.expected_type for r in records] == [
        "Patient", "!next link points to another server (https://evil.test/steal); not followed",
        "Condition", "!next link repeats an earlier page (paging loop)"]
    assert source.incomplete == {"Patient", "Condition"} and source.new_state() == {}


# -- retries ------------------------------------------------------------------------------------------
def test_retries_429_retry_after_seconds_and_date_503_connection_error_truncated_body_then_success():
    ok = json.dumps(bundle([res("Patient", "p1")])).encode()
    script = [
        lambda r: fhir(429, oo("slow down"), {"Retry-After": "7"}),
        lambda r: fhir(429, oo("slow down"), {"Date": DATE, "Retry-After": http_date(DATE_TS + 12)}),
        lambda r: fhir(503, oo("maintenance")),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("[Errno 104] Connection reset by peer")),
        lambda r: truncated(ok),
        lambda r: httpx.Response(200, content=ok, headers={"Content-Type": "application/fhir+json"}),
    ]

    def handler(request):
        return script.pop(0)(request)

    http, sleeps = make_http(handler, max_retries=5, backoff=0.5)
    records = list(RestSource(BASE, http, ("Patient",)).records())
    assert [json.loads(r.text)["id"] for r in records] == ["p1"]
    assert sleeps[:2] == [7.0, 12.0]
    # exponential backoff with jitter in [d/2, d]: d = 0.5 * 2**attempt
    for attempt, wait in enumerate(sleeps[2:], start=2):
        assert 0.5 * 2 ** attempt / 2 <= wait <= 0.5 * 2 ** attempt
    assert http.stats["requests"] == 6 and http.stats["retries"] == 5
    assert (http.stats["retry:429"], http.stats["retry:503"], http.stats["retry:connect"],
            http.stats["retry:incomplete"]) == (2, 1, 1, 1)


def test_retry_after_parsing():
    def response(**headers):
        return httpx.Response(503, headers=headers)

    assert retry_after_seconds(response(**{"Retry-After": "120"})) == 120
    assert retry_after_seconds(response(**{"Retry-After": http_date(DATE_TS + 30), "Date": DATE})) == 30
    assert retry_after_seconds(response(**{"Retry-After": http_date(1000)}), now=lambda: 990) == 10
    assert retry_after_seconds(response(**{"Retry-After": http_date(DATE_TS - 30), "Date": DATE})) == 0
    assert retry_after_seconds(response(**{"Retry-After": "soon"})) is None
    assert retry_after_seconds(response()) is None


def test_backoff_is_capped():
    http, _ = make_http(lambda r: fhir(200, {}), backoff=0.5, max_backoff=30)
    assert all(15 <= http.backoff_delay(n) <= 30 for n in range(6, 40))


def test_bounded_retries_end_in_unreachable_error():
    def refused(request):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    http, sleeps = make_http(refused, max_retries=3)
    with pytest.raises(UnreachableError) as caught:
        list(RestSource(BASE, http, ("Patient",)).records())
    assert str(caught.value) == ("FHIR server unreachable at https://fhir.test/fhir: [Errno 111] Connection "
                                 "refused (gave up after 3 retries)")
    assert http.stats["requests"] == 4 and len(sleeps) == 3

    def slow(request):
        raise httpx.ReadTimeout("timed out")

    http, _ = make_http(slow, max_retries=2)
    with pytest.raises(UnreachableError, match="unreachable at https://fhir.test/fhir: timed out"):
        http.get("metadata")
    assert http.stats["retry:timeout"] == 2


def test_persistent_503_and_4xx_are_server_errors_with_operation_outcome_text():
    http, sleeps = make_http(lambda r: fhir(503, oo("database is restarting")), max_retries=2)
    with pytest.raises(ServerError) as caught:
        list(RestSource(BASE, http, ("Observation",)).records())
    assert str(caught.value) == ("FHIR server error 503 on Observation search: database is restarting "
                                 "(gave up after 2 retries)")
    assert caught.value.status == 503 and len(sleeps) == 2

    http, sleeps = make_http(lambda r: fhir(400, oo("Unknown search parameter 'foo'")))
    with pytest.raises(ServerError) as caught:
        list(RestSource(BASE, http, ("Observation",)).records())
    assert str(caught.value) == "FHIR server error 400 on Observation search: Unknown search parameter 'foo'"
    assert http.stats["requests"] == 1 and sleeps == []

    http, _ = make_http(lambda r: httpx.Response(404, text="<html>nope</html>"))
    with pytest.raises(ServerError, match="404 on GET https://fhir.test/fhir/Nope: Not Found"):
        http.get("Nope")


# -- auth -------------------------------------------------------------------------------------------------
def test_basic_and_bearer_headers_and_no_retry_of_static_credentials():
    seen = []

    def handler(request):
        seen.append(request.headers.get("Authorization"))
        return fhir(401, oo("invalid or missing credentials"), {"WWW-Authenticate": 'Basic realm="fhir"'})

    http, _ = make_http(handler, auth=BasicAuth("alice", "s3cret:pw"))
    with pytest.raises(AuthError) as caught:
        http.get("Patient")
    assert str(caught.value) == "FHIR server refused the credentials (401 invalid or missing credentials)"
    assert seen == ["Basic YWxpY2U6czNjcmV0OnB3"] and "s3cret" not in repr(http)

    seen.clear()
    http, _ = make_http(handler, auth=NoAuth())
    with pytest.raises(AuthError, match="requires authentication"):
        http.get("Patient")
    assert seen == [None]

    http, _ = make_http(lambda r: fhir(200, {"ok": r.headers.get("Authorization")}), auth=BearerAuth("tkn"))
    assert http.get("Patient").json() == {"ok": "Bearer tkn"}
    # credentials never go to another origin unless asked
    assert http.get("https://elsewhere.test/file").json() == {"ok": None}
    assert "tkn" not in repr(BearerAuth("tkn"))


class SmartServer:
    """SMART backend services: discovery, token endpoint verifying the client assertion, protected API."""

    TOKEN_URL = "https://auth.test/oauth/token"

    def __init__(self, public_key, alg: str, lifetime: int = 300, reject_tokens: int = 0, forbid: bool = False):
        self.public_key, self.alg, self.lifetime = public_key, alg, lifetime
        self.reject_tokens, self.forbid = reject_tokens, forbid
        self.assertions: list[tuple[dict, dict]] = []
        self.issued: list[str] = []
        self.api_tokens: list[str | None] = []
        self.discoveries = 0
        self.token_error: tuple[int, dict] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/fhir/.well-known/smart-configuration":
            self.discoveries += 1
            assert "Authorization" not in request.headers
            return httpx.Response(200, json={"token_endpoint": self.TOKEN_URL,
                                             "token_endpoint_auth_methods_supported": ["private_key_jwt"]})
        if str(request.url) == self.TOKEN_URL:
            assert "Authorization" not in request.headers
            assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            assert form["grant_type"] == "client_credentials" and form["scope"] == "system/*.read"
            assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            header = jwt.get_unverified_header(form["client_assertion"])
            claims = jwt.decode(form["client_assertion"], self.public_key, algorithms=[self.alg],
                                audience=self.TOKEN_URL, leeway=600, options={"require": ["exp", "iat", "jti", "iss", "sub"]})
            self.assertions.append((header, claims))
            if self.token_error:
                return httpx.Response(self.token_error[0], json=self.token_error[1])
            token = f"tok-{len(self.issued) + 1}"
            self.issued.append(token)
            return httpx.Response(200, json={"access_token": token, "token_type": "bearer",
                                             "expires_in": self.lifetime, "scope": "system/*.read"})
        auth = request.headers.get("Authorization", "")
        self.api_tokens.append(auth.removeprefix("Bearer ") or None)
        if self.forbid:
            return fhir(403, oo("the access token's scope does not permit search of Observation"))
        if not auth.startswith("Bearer ") or self.reject_tokens > 0:
            self.reject_tokens -= 1
            return fhir(401, oo("invalid or expired token"),
                        {"WWW-Authenticate": 'Bearer realm="fhir", error="invalid_token"'})
        return fhir(200, bundle([res("Patient", "p1")]))


def _keys(alg: str):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS384" else \
        ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, key.public_key()


@pytest.fixture(scope="module")
def keys():
    return {alg: _keys(alg) for alg in ("RS384", "ES384")}


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_discovery_signed_assertion_and_refresh_before_expiry(keys, alg):
    pem, public = keys[alg]
    server = SmartServer(public, alg, lifetime=300)
    now = [datetime.now(timezone.utc).timestamp()]
    auth = SmartBackendAuth("registry-client", pem, "key-1", alg=alg, clock=lambda: now[0])
    http, _ = make_http(server, auth=auth)
    assert "BEGIN" not in repr(auth) and "registry-client" in repr(auth)

    http.get("Patient")
    now[0] += 200                                   # well inside the token's life: cached
    http.get("Patient")
    now[0] += 41                                    # 59 s left < refresh margin (60 s): a new token first
    http.get("Patient")
    assert server.discoveries == 1 and server.issued == ["tok-1", "tok-2"]
    assert server.api_tokens == ["tok-1", "tok-1", "tok-2"]   # no 401 was needed
    (h1, c1), (h2, c2) = server.assertions
    assert h1["kid"] == "key-1" and h1["alg"] == alg and h1["typ"] == "JWT"
    assert c1["iss"] == c1["sub"] == "registry-client" and c1["aud"] == SmartServer.TOKEN_URL
    assert c1["exp"] - c1["iat"] == 300 and c1["jti"] != c2["jti"]
    assert http.stats["auth_refresh"] == 0


def test_smart_401_refreshes_once_then_succeeds_and_twice_is_auth_error(keys):
    pem, public = keys["RS384"]
    server = SmartServer(public, "RS384", reject_tokens=1)
    http, _ = make_http(server, auth=SmartBackendAuth("c", pem, "k"))
    assert [json.loads(r.text)["id"] for r in RestSource(BASE, http, ("Patient",)).records()] == ["p1"]
    assert server.api_tokens == ["tok-1", "tok-2"] and http.stats["auth_refresh"] == 1

    server = SmartServer(public, "RS384", reject_tokens=99)
    http, _ = make_http(server, auth=SmartBackendAuth("c", pem, "k"))
    with pytest.raises(AuthError) as caught:
        http.get("Patient")
    assert str(caught.value) == "FHIR server refused the credentials (401 invalid_token: invalid or expired token)"
    assert server.api_tokens == ["tok-1", "tok-2"]

    server = SmartServer(public, "RS384", forbid=True)
    http, _ = make_http(server, auth=SmartBackendAuth("c", pem, "k"))
    with pytest.raises(AuthError, match=r"refused access \(403 on GET https://fhir.test/fhir/Observation: "
                                        r"the access token's scope does not permit search of Observation\)"):
        http.get("Observation")


def test_smart_token_endpoint_refusal_is_auth_error(keys):
    pem, public = keys["ES384"]
    server = SmartServer(public, "ES384")
    server.token_error = (401, {"error": "invalid_client", "error_description": "unknown key id"})
    http, _ = make_http(server, auth=SmartBackendAuth("c", pem, "k", alg="ES384"))
    with pytest.raises(AuthError) as caught:
        http.get("Patient")
    assert str(caught.value) == "FHIR server refused the credentials (401 invalid_client: unknown key id)"
    with pytest.raises(ExtractError, match="not an EC P-384 key"):
        SmartBackendAuth("c", keys["RS384"][0], "k", alg="ES384")
    with pytest.raises(ExtractError, match="not a PEM private key"):
        SmartBackendAuth("c", b"garbage", "k")


def test_auth_from_env(keys, tmp_path):
    assert isinstance(auth_from_env({}), NoAuth)
    with pytest.raises(ExtractError, match="DLMREG_FHIR_AUTH=basic needs DLMREG_FHIR_PASSWORD"):
        auth_from_env({"DLMREG_FHIR_AUTH": "basic", "DLMREG_FHIR_USERNAME": "u"})
    with pytest.raises(ExtractError, match="needs DLMREG_FHIR_TOKEN"):
        auth_from_env({"DLMREG_FHIR_AUTH": "bearer"})
    with pytest.raises(ExtractError, match="none, basic, bearer or smart"):
        auth_from_env({"DLMREG_FHIR_AUTH": "kerberos"})
    with pytest.raises(ExtractError, match="DLMREG_SMART_PRIVATE_KEY or DLMREG_SMART_PRIVATE_KEY_FILE"):
        auth_from_env({"DLMREG_FHIR_AUTH": "smart", "DLMREG_SMART_CLIENT_ID": "c", "DLMREG_SMART_KID": "k"})
    with pytest.raises(ExtractError, match="cannot be read"):
        auth_from_env({"DLMREG_FHIR_AUTH": "smart", "DLMREG_SMART_CLIENT_ID": "c", "DLMREG_SMART_KID": "k",
                       "DLMREG_SMART_PRIVATE_KEY_FILE": str(tmp_path / "missing.pem")})
    basic = auth_from_env({"DLMREG_FHIR_AUTH": "basic", "DLMREG_FHIR_USERNAME": "u", "DLMREG_FHIR_PASSWORD": "pw!"})
    assert basic.headers() == {"Authorization": "Basic dTpwdyE="} and "pw!" not in repr(basic)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(keys["ES384"][0])
    smart = auth_from_env({"DLMREG_FHIR_AUTH": "smart", "DLMREG_SMART_CLIENT_ID": "c", "DLMREG_SMART_KID": "k",
                           "DLMREG_SMART_PRIVATE_KEY_FILE": str(key_file), "DLMREG_SMART_ALG": "es384",
                           "DLMREG_SMART_SCOPE": "system/Patient.rs"})
    assert (smart.alg, smart.scope) == ("ES384", "system/Patient.rs")
    escaped = keys["RS384"][0].decode().replace("\n", "\\n")      # PEM pasted into a .env file
    smart = auth_from_env({"DLMREG_FHIR_AUTH": "smart", "DLMREG_SMART_CLIENT_ID": "c", "DLMREG_SMART_KID": "k",
                           "DLMREG_SMART_PRIVATE_KEY": escaped})
    assert smart.alg == "RS384" and "PRIVATE" not in repr(smart)


# -- bulk data ------------------------------------------------------------------------------------------
class BulkServer:
    STATUS = f"{BASE}/$export-poll-status?_jobId=j1"

    def __init__(self, polls=None, errors=None, fail_status=None):
        self.log: list[tuple[str, str]] = []
        self.kickoffs: list[httpx.Request] = []
        self.file_auth: dict[str, str | None] = {}
        self.polls = polls if polls is not None else [
            {"X-Progress": "30% (Patient)", "Retry-After": "3"},
            {"X-Progress": "80%", "Retry-After": http_date(DATE_TS + 5), "Date": DATE},
            {},
        ]
        self.fail_status = fail_status
        self.truncate_once = True
        patient = b'{"resourceType":"Patient","id":"p1","name":[{"text":"A\xe2\x80\xa8B"}]}\n\n' \
                  b'{"resourceType":"Patient","id":"p2"}\r\n\xff\xfe bad bytes\n{"resourceType":"Patient","id":"p3"}'
        observations = b"".join(json.dumps(res("Observation", f"o{i}")).encode() + b"\n" for i in range(6))
        self.files = {
            "https://fhir.test/fhir/files/Patient.000.ndjson": patient,
            "https://files.test/bucket/Observation.000.ndjson?sig=SECRET": observations,
            "https://fhir.test/fhir/files/Condition.000.ndjson": json.dumps(res("Condition", "c1")).encode(),
            "https://fhir.test/fhir/files/Encounter.000.ndjson": json.dumps(res("Encounter", "e1")).encode(),
            "https://fhir.test/fhir/files/deleted.ndjson": json.dumps({
                "resourceType": "Bundle", "type": "transaction", "entry": [
                    {"request": {"method": "DELETE", "url": "Observation/o9"}},
                    {"request": {"method": "DELETE", "url": "Patient/p7"}},
                    {"request": {"method": "DELETE", "url": "Encounter/e2"}}]}).encode() + b"\n",
            "https://fhir.test/fhir/files/error.ndjson": b"".join(
                json.dumps(oo(text, severity)).encode() + b"\n"
                for severity, text in (errors or [("warning", "Group member Patient/p9 not found")])),
        }
        self.manifest = {
            "transactionTime": "2024-06-01T07:59:00Z", "request": "ignored", "requiresAccessToken": True,
            "output": [{"type": "Patient", "url": "https://fhir.test/fhir/files/Patient.000.ndjson", "count": 99},
                       {"type": "Observation", "url": "https://files.test/bucket/Observation.000.ndjson?sig=SECRET"},
                       {"type": "Condition", "url": "https://fhir.test/fhir/files/Condition.000.ndjson"},
                       {"type": "Encounter", "url": "https://fhir.test/fhir/files/Encounter.000.ndjson"}],
            "deleted": [{"type": "Bundle", "url": "https://fhir.test/fhir/files/deleted.ndjson"}],
            "error": [{"type": "OperationOutcome", "url": "https://fhir.test/fhir/files/error.ndjson"}]}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.log.append((request.method, url.split("?")[0]))
        if request.url.path.endswith("/$export"):
            self.kickoffs.append(request)
            return fhir(202, oo("accepted", "information"), {"Content-Location": self.STATUS})
        if url == self.STATUS and request.method == "DELETE":
            return fhir(202, oo("cancelled", "information"))
        if url == self.STATUS:
            if self.fail_status:
                return fhir(self.fail_status, oo("export failed: disk full"))
            if self.polls:
                return httpx.Response(202, headers=self.polls.pop(0))
            return httpx.Response(200, json=self.manifest)
        if url in self.files:
            self.file_auth[url.split("?")[0]] = request.headers.get("Authorization")
            data = self.files[url]
            if "Observation" in url and self.truncate_once:
                self.truncate_once = False
                return truncated(data, keep=len(data) // 2 + 3, content_type="application/fhir+ndjson")
            return httpx.Response(200, content=data, headers={"Content-Type": "application/fhir+ndjson"})
        raise AssertionError(f"unexpected {request.method} {url}")


def test_bulk_export_kickoff_poll_manifest_streamed_files_deleted_errors_and_one_job():
    server = BulkServer()
    http, http_sleeps = make_http(server, auth=BearerAuth("secret-token"))
    sleeps = Sleeps()
    source = BulkSource(BASE, http, ("Patient", "Condition", "Observation"), level="group", group_id="dlm-cohort",
                        since="2024-05-01T00:00:00Z", sleep=sleeps, poll_interval=2)
    assert not source.is_snapshot and source.describe() == "fhir-bulk:group/dlm-cohort:https://fhir.test/fhir"
    first = list(source.records(types={"Patient", "Condition"}))
    second = list(source.records(exclude={"Patient", "Condition"}))

    assert len(server.kickoffs) == 1                      # one export job serves both passes
    kickoff = server.kickoffs[0]
    assert kickoff.url.path == "/fhir/Group/dlm-cohort/$export"
    assert dict(kickoff.url.params) == {"_type": "Patient,Condition,Observation", "_since": "2024-05-01T00:00:00Z"}
    assert kickoff.headers["Prefer"] == "respond-async" and kickoff.headers["Accept"] == "application/fhir+json"
    assert sleeps == [3.0, 5.0, 8.0]                      # Retry-After seconds, HTTP-date, then backoff 2*2**2
    assert source.progress == "80%"
    with pytest.raises(ExtractError, match="needs a FHIR Group id"):
        BulkSource(BASE, http, ("Patient",), level="group", group_id="a/../b")

    patients = [r for r in first if r.expected_type == "Patient"]
    assert [json.loads(r.text)["id"] for r in patients] == ["p1", "p2", "p3"]
    assert json.loads(patients[0].text)["name"][0]["text"] == "A\u2028B"     # U+2028 is not a line break
    assert [r.location for r in first] == [
        "https://fhir.test/fhir/files/Patient.000.ndjson:1", "https://fhir.test/fhir/files/Patient.000.ndjson:3",
        "https://fhir.test/fhir/files/Patient.000.ndjson:4", "https://fhir.test/fhir/files/Patient.000.ndjson:5",
        "https://fhir.test/fhir/files/Condition.000.ndjson:1"]
    assert first[2].expected_type.startswith("!not UTF-8")
    assert first[-1].expected_type == "Condition"
    # Observation: cut short once, resumed without repeating lines; pre-signed query kept out of locations
    assert [json.loads(r.text)["id"] for r in second] == [f"o{i}" for i in range(6)]
    assert second[0].location == "https://files.test/bucket/Observation.000.ndjson:1"
    assert {r.expected_type for r in second} == {"Observation"}
    assert http.stats["retry:incomplete"] == 1 and len(http_sleeps) == 1
    # requiresAccessToken: the token goes with every file, also to the other host
    assert set(server.file_auth.values()) == {"Bearer secret-token"}
    assert "https://fhir.test/fhir/files/Encounter.000.ndjson" not in server.file_auth   # not requested

    assert source.deleted == [("Observation", "o9"), ("Patient", "p7")]
    assert source.errors == ["Group member Patient/p9 not found"] and not source.incomplete
    assert source.new_state() == {"_bulk": "2024-06-01T07:59:00Z"}
    source.close()
    assert server.log[-1] == ("DELETE", f"{BASE}/$export-poll-status")   # finished job's files released
    assert http.client.is_closed


def test_bulk_error_file_with_errors_marks_the_export_incomplete():
    server = BulkServer(polls=[], errors=[("error", "could not serialize Observation/o5"), ("warning", "slow")])
    http, _ = make_http(server)
    source = BulkSource(BASE, http, ("Patient",), sleep=Sleeps())
    assert source.is_snapshot
    list(source.records())
    assert source.errors == ["could not serialize Observation/o5", "slow"]
    assert source.incomplete == {"$export errors"}
    assert server.kickoffs[0].url.path == "/fhir/$export" and "_since" not in server.kickoffs[0].url.params
    assert set(server.file_auth.values()) == {None}


def test_bulk_cancels_the_job_when_polling_fails_or_is_interrupted():
    server = BulkServer(fail_status=500)
    http, _ = make_http(server, max_retries=1)
    source = BulkSource(BASE, http, ("Patient",), level="patient", sleep=Sleeps())
    with pytest.raises(ServerError, match=r"error 500 on \$export status: export failed: disk full"):
        list(source.records())
    assert server.kickoffs[0].url.path == "/fhir/Patient/$export"
    assert server.log[-1] == ("DELETE", f"{BASE}/$export-poll-status") and source.cancelled

    def interrupt(seconds):
        raise KeyboardInterrupt

    server = BulkServer()
    source = BulkSource(BASE, make_http(server)[0], ("Patient",), sleep=interrupt)
    with pytest.raises(KeyboardInterrupt):
        list(source.records())
    assert server.log[-1] == ("DELETE", f"{BASE}/$export-poll-status")

    server = BulkServer(polls=[{"Retry-After": "600"}] * 10)
    sleeps = Sleeps()
    with BulkSource(BASE, make_http(server)[0], ("Patient",), sleep=sleeps, poll_max_wait=1500) as source:
        with pytest.raises(ExtractError, match="not complete after waiting 1200 s"):
            list(source.records())
    assert sleeps == [600, 600]
    assert [m for m, _ in server.log].count("DELETE") == 1          # cancelled once, not again on close


def test_bulk_file_sent_as_gzip_and_a_proxy_error_page_instead_of_a_file():
    import gzip

    lines = b"".join(json.dumps(res("Patient", f"p{i}")).encode() + b"\n" for i in range(3))
    pages = [httpx.Response(200, content=b"<html><body>502 upstream</body></html>\n"),
             httpx.Response(200, content=gzip.compress(lines), headers={"Content-Type": "application/gzip"})]

    def handler(request):
        if request.url.path.endswith("$export"):
            return httpx.Response(202, headers={"Content-Location": "status"})      # relative: resolved
        if request.url.path == "/fhir/status":
            return httpx.Response(200, json={"transactionTime": "2024-06-01T07:00:00Z",
                                             "output": [{"type": "Patient", "url": f"{BASE}/f/Patient.ndjson.gz"}]})
        return pages.pop(0)

    http, sleeps = make_http(handler)
    source = BulkSource(BASE, http, ("Patient",), sleep=Sleeps())
    records = list(source.records())
    assert [json.loads(r.text)["id"] for r in records] == ["p0", "p1", "p2"]
    assert records[0].location == "https://fhir.test/fhir/f/Patient.ndjson.gz:1"
    assert http.stats["retry:invalid_json"] == 1 and len(sleeps) == 1 and source.status_url == f"{BASE}/status"


# -- the sources feed staging -----------------------------------------------------------------------------
def test_rest_and_bulk_sources_stage_like_the_files(cohort_factory, tmp_path):
    from etl.extract import FileSource
    from etl.registry import open_registry
    from etl.stage import load_extract_state, stage_source
    from etl.stage.pseudonym import Pseudonymizer
    from etl.transform import SUPPORTED_TYPES
    from etl.vocabulary import load_code_map

    cohort = cohort_factory(6, 3)
    by_type: dict[str, list[dict]] = {}
    for path in sorted(cohort.glob("*.ndjson")):
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            by_type.setdefault(resource["resourceType"], []).append(resource)
    types = tuple(sorted(by_type))

    def rest(request):
        # /fhir/<Type> starts a search; /fhir/page/<Type>/<offset> are the server's own next links
        parts = request.url.path.split("/")[2:]
        rtype, offset = (parts[0], 0) if len(parts) == 1 else (parts[1], int(parts[2]))
        items = by_type.get(rtype, [])
        nxt = f"{BASE}/page/{rtype}/{offset + 25}" if offset + 25 < len(items) else None
        return fhir(200, bundle(items[offset:offset + 25], nxt), {"Date": DATE})

    def stage(source, name):
        registry = open_registry(f"sqlite:///{tmp_path / name}.sqlite")
        accounting = stage_source(registry.engine, registry.tables, source, load_code_map(), Pseudonymizer(),
                                  "run-1", SUPPORTED_TYPES, show_progress=False)
        return accounting, load_extract_state(registry.engine, registry.tables, source.describe())

    expected, _ = stage(FileSource(cohort), "files")
    with RestSource(BASE, make_http(rest)[0], types) as source:
        accounting, state = stage(source, "rest")
    assert accounting.loaded == expected.loaded > 0 and dict(accounting.excluded) == dict(expected.excluded)
    assert state == {t: "2024-06-01T08:00:00Z" for t in types}

    files = {t: "\n".join(json.dumps(r) for r in rs).encode() for t, rs in by_type.items()}

    def bulk(request):
        if request.url.path.endswith("$export"):
            return httpx.Response(202, headers={"Content-Location": f"{BASE}/status/1"})
        if request.url.path == "/fhir/status/1":
            return httpx.Response(200, json={"transactionTime": "2024-06-01T07:00:00Z", "requiresAccessToken": False,
                                             "output": [{"type": t, "url": f"{BASE}/files/{t}.ndjson"} for t in files],
                                             "error": []})
        return httpx.Response(200, content=files[request.url.path.split("/")[-1].removesuffix(".ndjson")])

    with BulkSource(BASE, make_http(bulk)[0], types, sleep=Sleeps()) as source:
        accounting, state = stage(source, "bulk")
    assert accounting.loaded == expected.loaded and dict(accounting.quarantined) == dict(expected.quarantined)
    assert state == {"_bulk": "2024-06-01T07:00:00Z"}
