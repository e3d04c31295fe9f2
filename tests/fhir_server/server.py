"""FHIR R4 TEST server: HTTP front end, search paging, Bulk Data ``$export``, auth and fault injection.

THIS IS A TEST SERVER FOR THE TEST SUITE. It is NOT for production: it binds 127.0.0.1 only, keeps
everything in memory, uses a throw-away self-signed certificate for TLS and has no real security.
"""
from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import ipaddress
import json
import math
import re
import secrets
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from tests.fhir_server.auth import SIGNING_ALGS, SUPPORTED_SCOPES, Grant, SmartAuth, TokenError
from tests.fhir_server.faults import Faults
from tests.fhir_server.store import (
    R4_RESOURCE_TYPES,
    Record,
    Store,
    format_instant,
    parse_fhir_datetime,
    patient_refs,
    reference_key,
)

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"
JSON = "application/json"
MAX_COUNT = 1000
AUTH_MODES = ("none", "bearer", "basic", "smart")
SEARCH_PARAMS = frozenset({"_count", "_lastUpdated", "_id", "patient", "subject", "_format", "_pretty", "_total"})
EXPORT_PARAMS = frozenset({"_type", "_since", "_outputFormat"})
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)$", re.S)
NOT_JSON = b"<html><head><title>502 Bad Gateway</title></head><body>upstream proxy error</body></html>\n"


def _json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _ndjson(objs: Iterable[dict]) -> bytes:
    return b"".join(_json(o) + b"\n" for o in objs)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = FHIR_JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


class HttpError(Exception):
    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


def outcome(status: int, code: str, diagnostics: str, severity: str = "error",
            headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}
    return Response(status, _json(body), FHIR_JSON, list(headers))


def bad_request(diagnostics: str) -> HttpError:
    return HttpError(outcome(400, "invalid", diagnostics))


def not_found(diagnostics: str) -> HttpError:
    return HttpError(outcome(404, "not-found", diagnostics))


@dataclass
class Request:
    method: str
    target: str  # the raw request target (path and query)
    path: str
    segments: list[str]
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]


@dataclass
class ExportJob:
    id: str
    manifest: dict
    files: dict[str, tuple[bytes, str | None]]  # name -> (NDJSON, resource type for the scope check)
    polls: int = 0


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):  # skip HTTPServer's reverse DNS lookup of the host
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):  # quiet: dropped connections are expected
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FhirTestServer/1.0"
    timeout = 30

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle/delayed-ACK stalls
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        self.server.app._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.app._track(self.connection, False)

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        self.server.app._handle(self, "GET")

    def do_POST(self):
        self.server.app._handle(self, "POST")

    def do_DELETE(self):
        self.server.app._handle(self, "DELETE")

    def do_PUT(self):
        self.server.app._handle(self, "PUT")

    def do_PATCH(self):
        self.server.app._handle(self, "PATCH")

    def do_HEAD(self):
        self.server.app._handle(self, "HEAD")


class FhirTestServer:
    """An in-memory FHIR R4 server for tests (NOT for production), on 127.0.0.1 and an ephemeral port.

    Parameters
    ----------
    resources: resources to ``upsert`` at construction.
    auth: ``"none"``, ``"bearer"`` (``Authorization: Bearer <bearer_token>``), ``"basic"`` (HTTP Basic with
        ``basic=(user, password)``) or ``"smart"`` (SMART Backend Services: ``POST {url}/token`` with a
        private_key_jwt client assertion, see ``register_smart_client``).
    page_size: default ``_count`` of searches (``_count`` is capped at 1000).
    export_polls: how many status polls of an ``$export`` answer 202 before the manifest (200).
    export_retry_after: the Retry-After (seconds) of those 202 polls.
    export_file_size: the most resources per NDJSON file of an export (a type with more is split).
    token_lifetime: seconds a SMART access token is valid (by ``clock``).
    tls: serve HTTPS with a self-signed certificate; trust ``ca_file`` in the client.
    base_path: the path of the FHIR base.

    Endpoints (relative to ``url``): ``/metadata``, ``/.well-known/smart-configuration`` and ``/token``
    (smart only), ``/{Type}`` (search; ``POST /{Type}/_search`` too), ``?_getpages=<token>`` (next pages),
    ``/{Type}/{id}``, ``/{Type}/{id}/_history[/{vid}]``, ``/$export``, ``/Patient/$export``,
    ``/Group/{id}/$export``, ``/$export-poll-status?_jobId=..`` (GET polls, DELETE cancels) and
    ``/$export-file/{job}/{name}``. ``/metadata``, the SMART configuration and the token endpoint need no
    credentials; everything else does when ``auth != "none"``.
    """

    def __init__(self, resources: Iterable[dict] = (), *, auth: str = "none", bearer_token: str = "test-token",
                 basic: tuple[str, str] = ("user", "pass"), page_size: int = 50, export_polls: int = 2,
                 export_retry_after: int = 1, export_file_size: int = 1000, token_lifetime: int = 300,
                 tls: bool = False, base_path: str = "/fhir"):
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {AUTH_MODES}")
        if page_size < 1 or export_polls < 0 or export_file_size < 1 or token_lifetime < 1:
            raise ValueError("page_size, export_file_size and token_lifetime must be >= 1; export_polls >= 0")
        self.auth = auth
        self.bearer_token = bearer_token
        self.basic = tuple(basic)
        self.page_size = page_size
        self.export_polls = export_polls
        self.export_retry_after = export_retry_after
        self.export_file_size = export_file_size
        self.token_lifetime = token_lifetime
        self.tls = tls
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
        self.ca_file: str | None = None
        self._store = Store(lambda: self.clock())
        self._lock = self._store.lock
        self._smart = SmartAuth()
        self._log: list[dict] = []
        self._faults = Faults()
        self._fault_requests = 0
        self._faults_injected = 0
        self._throttles = 0
        self._searches: dict[str, tuple[str, list[str]]] = {}
        self._pages: dict[str, tuple[str, int, int]] = {}
        self._page_tokens: dict[tuple[str, int, int], str] = {}
        self._jobs: dict[str, ExportJob] = {}
        self._connections: set = set()
        self._httpd: _HTTPServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        for resource in resources:
            self.upsert(resource)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FhirTestServer:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.app = self
        if self.tls:
            self._tmpdir = tempfile.mkdtemp(prefix="fhir-test-server-")
            cert, key = _self_signed_certificate(Path(self._tmpdir))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
            self.ca_file = str(cert)
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fhir-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> FhirTestServer:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The listening port (kept after ``stop``; RuntimeError before ``start``)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def root(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The FHIR base URL, without a trailing slash."""
        return self.root + self.base_path

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    def _track(self, conn, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- data -----------------------------------------------------------------------------------
    def upsert(self, resource: dict, owned: bool = False) -> dict | None:
        """Create or update; sets meta.versionId (1, 2, ...) and meta.lastUpdated (strictly increasing).

        A missing id is assigned (uuid4). Returns a copy of the stored resource; with `owned` (the caller
        hands the resource over, as a line just parsed) it is stored as it is and nothing is returned.
        """
        with self._lock:
            return self._store.upsert(resource, owned)

    def delete(self, resource_type: str, id: str) -> datetime:
        """Delete (reads give 410, searches skip it, ``$export`` with ``_since`` lists it). KeyError if unknown."""
        with self._lock:
            return self._store.delete(resource_type, id)

    def load_ndjson_dir(self, path) -> int:
        """Upsert every resource of every ``*.ndjson`` (and ``*.ndjson.gz``) file in ``path``; returns the count."""
        count = 0
        files = sorted(p for p in Path(path).iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")))
        for file in files:
            opener = gzip.open if file.name.endswith(".gz") else open
            with opener(file, "rt", encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        self.upsert(json.loads(line), owned=True)
                        count += 1
        return count

    def register_smart_client(self, client_id: str, public_jwk: dict) -> None:
        """Register (another) key of a SMART backend client; ``public_jwk`` needs a ``kid``.

        RSA keys verify RS384 assertions, EC P-384 keys ES384. Private members of the JWK are ignored.
        """
        with self._lock:
            self._smart.register(client_id, public_jwk)

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        with self._lock:
            self._faults = value or Faults()
            self._fault_requests = 0
            self._faults_injected = 0
            self._throttles = 0

    @property
    def request_log(self) -> list[dict]:
        """Copies of ``{"method", "path", "query", "status", "auth", "fault"}`` per request, in arrival order.

        ``query`` maps a name to its value (a list when repeated); ``status`` is None for a dropped
        connection; ``auth`` is whether an Authorization header was sent; ``fault`` the injected kind.
        """
        with self._lock:
            return [dict(e, query=dict(e["query"])) for e in self._log]

    def clear_request_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- request handling -----------------------------------------------------------------------
    def _handle(self, h: _Handler, method: str) -> None:
        split = urlsplit(h.path)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        query: dict = {}
        for k, v in pairs:
            if k in query:
                query[k] = (query[k] if isinstance(query[k], list) else [query[k]]) + [v]
            else:
                query[k] = v
        entry = {"method": method, "path": split.path, "query": query, "status": None,
                 "auth": bool(h.headers.get("Authorization")), "fault": None}
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        body = h.rfile.read(length) if length > 0 else b""
        with self._lock:
            self._log.append(entry)
            fault = self._next_fault()
            entry["fault"] = fault
        base = self.base_path
        inside = split.path == base or split.path.startswith(base + "/")
        segments = [unquote(s) for s in split.path[len(base):].split("/") if s] if inside else None
        req = Request(method, h.path, split.path, segments, pairs,
                      {k.lower(): v for k, v in h.headers.items()}, body)
        if length < 0:
            self._send(h, outcome(400, "invalid", "invalid Content-Length"), entry, close=True)
        elif fault:
            self._send_fault(h, req, fault, entry)
        else:
            self._send(h, self._run(self._route(req)[0]), entry)

    def _next_fault(self) -> str | None:
        f = self._faults
        if not f.active:
            return None
        self._fault_requests += 1
        if self._fault_requests % f.every:
            return None
        if f.limit is not None and self._faults_injected >= f.limit:
            return None
        kind = f.kinds[self._faults_injected % len(f.kinds)]
        self._faults_injected += 1
        return kind

    @staticmethod
    def _run(handler: Callable[[], Response]) -> Response:
        try:
            return handler()
        except HttpError as exc:
            return exc.response
        except Exception as exc:  # a bug in the test server: answer rather than hang the client
            return outcome(500, "exception", f"test server error: {type(exc).__name__}: {exc}")

    def _send(self, h: _Handler, resp: Response, entry: dict, truncate: bool = False, close: bool = False) -> None:
        with self._lock:
            entry["status"] = resp.status
        try:
            h.send_response(resp.status)
            if resp.content_type:
                h.send_header("Content-Type", resp.content_type)
            h.send_header("Content-Length", str(len(resp.body)))
            for name, value in resp.headers:
                h.send_header(name, value)
            if close:
                h.send_header("Connection", "close")
            h.end_headers()
            body = resp.body[: len(resp.body) // 2] if truncate else resp.body
            if h.command != "HEAD":
                for i in range(0, len(body), 65536):
                    h.wfile.write(body[i:i + 65536])
            h.wfile.flush()
        except OSError:
            close = True
        if truncate or close:
            h.close_connection = True
            self._shutdown(h)

    @staticmethod
    def _shutdown(h: _Handler) -> None:
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_fault(self, h: _Handler, req: Request, kind: str, entry: dict) -> None:
        handler, safe, content_type = self._route(req)
        if kind == "drop":
            h.close_connection = True
            self._shutdown(h)
        elif kind == "429":
            with self._lock:
                self._throttles += 1
                odd = self._throttles % 2 == 1
            retry = "1" if odd else formatdate(math.floor(time.time()) + 2, usegmt=True)
            self._send(h, outcome(429, "throttled", "too many requests", headers=[("Retry-After", retry)]), entry)
        elif kind == "503":
            self._send(h, outcome(503, "transient", "service temporarily unavailable"), entry)
        elif kind == "expire_token":
            self._send(h, self._unauthorized(token_present=True), entry)
        elif kind == "invalid_json":
            self._send(h, Response(200, NOT_JSON, content_type), entry)
        elif kind == "truncate":
            resp = self._run(handler) if safe else None
            if resp is None or resp.status != 200 or len(resp.body) < 2:
                if content_type == FHIR_NDJSON:
                    body = _ndjson({"resourceType": "Observation", "id": f"t{i}", "status": "final"} for i in range(20))
                else:
                    body = _json({"resourceType": "Bundle", "type": "searchset",
                                  "entry": [{"resource": {"resourceType": "Basic", "id": f"t{i}"}} for i in range(20)]})
                resp = Response(200, body, content_type)
            self._send(h, resp, entry, truncate=True)

    # -- routing --------------------------------------------------------------------------------
    def _route(self, req: Request) -> tuple[Callable[[], Response], bool, str]:
        """(handler, safe to run for a truncated reply, content type of its success)."""
        segs, m = req.segments, req.method
        not_allowed = outcome(405, "not-supported", f"{m} is not supported here")

        def fail(resp: Response):
            return (lambda: resp), False, FHIR_JSON

        def to(handler: Callable[[], Response], safe: bool, content_type: str, *methods: str):
            allowed = m in methods or (m == "HEAD" and "GET" in methods)
            return (handler, safe, content_type) if allowed else fail(not_allowed)

        if segs is None:
            return fail(outcome(404, "not-found", f"not a FHIR endpoint; the base is {self.base_path}"))
        if not segs:
            if req.values("_getpages"):
                return to(lambda: self._getpages(req), True, FHIR_JSON, "GET")
            return fail(outcome(404, "not-found", "no operation at the base (system search is not supported)"))
        head = segs[0]
        if segs == ["metadata"]:
            return to(self._metadata, True, FHIR_JSON, "GET")
        if segs in ([".well-known", "smart-configuration"], ["token"]) and self.auth != "smart":
            return fail(outcome(404, "not-found", "SMART is not enabled on this server"))
        if segs == [".well-known", "smart-configuration"]:
            return to(self._smart_configuration, True, JSON, "GET")
        if segs == ["token"]:
            return to(lambda: self._token(req), False, JSON, "POST")
        if segs == ["$export"]:
            return to(lambda: self._kickoff(req, "system"), False, FHIR_JSON, "GET")
        if segs == ["$export-poll-status"]:
            return to(lambda: self._status(req), False, JSON, "GET", "DELETE")
        if head == "$export-file" and len(segs) == 3:
            return to(lambda: self._file(req, segs[1], segs[2]), True, FHIR_NDJSON, "GET")
        if head.startswith(("$", "_", ".")):
            return fail(outcome(404, "not-found", f"unknown operation or path {head!r}"))
        rtype = head
        if len(segs) == 1:
            return to(lambda: self._search(req, rtype), True, FHIR_JSON, "GET")
        if len(segs) == 2 and segs[1] == "_search":
            return to(lambda: self._search(req, rtype), True, FHIR_JSON, "POST")
        if len(segs) == 2 and segs[1] == "$export" and rtype == "Patient":
            return to(lambda: self._kickoff(req, "patient"), False, FHIR_JSON, "GET")
        if len(segs) == 3 and segs[2] == "$export" and rtype == "Group":
            return to(lambda: self._kickoff(req, "group", segs[1]), False, FHIR_JSON, "GET")
        if any(s.startswith("$") for s in segs[1:]):
            return fail(outcome(404, "not-found", f"operation {'/'.join(segs[1:])} is not supported on {rtype}"))
        if len(segs) == 2:
            return to(lambda: self._read(req, rtype, segs[1]), True, FHIR_JSON, "GET")
        if len(segs) == 3 and segs[2] == "_history":
            return to(lambda: self._history(req, rtype, segs[1]), True, FHIR_JSON, "GET")
        if len(segs) == 4 and segs[2] == "_history":
            return to(lambda: self._vread(req, rtype, segs[1], segs[3]), True, FHIR_JSON, "GET")
        return fail(outcome(404, "not-found", f"unknown path {req.path}"))

    # -- auth -----------------------------------------------------------------------------------
    def _unauthorized(self, token_present: bool) -> Response:
        if self.auth == "basic":
            return outcome(401, "login", "invalid or missing credentials",
                           headers=[("WWW-Authenticate", 'Basic realm="fhir", charset="UTF-8"')])
        challenge = 'Bearer realm="fhir"'
        if token_present:
            challenge += ', error="invalid_token", error_description="invalid or expired token"'
        return outcome(401, "login", "invalid or expired token", headers=[("WWW-Authenticate", challenge)])

    def _authenticate(self, req: Request) -> Grant:
        if self.auth == "none":
            return Grant(None, None)
        scheme, _, credentials = req.headers.get("authorization", "").strip().partition(" ")
        credentials = credentials.strip()
        if self.auth == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = None
            expected = f"{self.basic[0]}:{self.basic[1]}"
            if scheme.lower() == "basic" and decoded is not None and hmac.compare_digest(decoded, expected):
                return Grant(self.basic[0], None)
            raise HttpError(self._unauthorized(False))
        if scheme.lower() != "bearer" or not credentials:
            raise HttpError(self._unauthorized(False))
        if self.auth == "bearer":
            if hmac.compare_digest(credentials, self.bearer_token):
                return Grant("bearer", None)
            raise HttpError(self._unauthorized(True))
        with self._lock:
            grant = self._smart.check(credentials, self._store.now())
        if grant is None:
            raise HttpError(self._unauthorized(True))
        return grant

    def _authorize(self, req: Request, rtype: str, perm: str) -> Grant:
        """Authenticate, then 404 for an unknown type and 403 when the scope lacks ``perm`` on it."""
        grant = self._authenticate(req)
        if rtype not in R4_RESOURCE_TYPES:
            raise not_found(f"unknown resource type {rtype!r}")
        if not grant.permits(rtype, perm):
            action = {"r": "read", "s": "search"}[perm]
            raise HttpError(outcome(403, "forbidden", f"the access token's scope does not permit {action} of {rtype}"))
        return grant

    def _token(self, req: Request) -> Response:
        no_store = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
        if not req.headers.get("content-type", "").lower().startswith("application/x-www-form-urlencoded"):
            return Response(400, _json({"error": "invalid_request",
                                        "error_description": "use application/x-www-form-urlencoded"}), JSON, no_store)
        form: dict[str, str] = {}
        for k, v in parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True):
            form.setdefault(k, v)
        with self._lock:
            try:
                body = self._smart.issue(form, self.token_url, self._store.now(), self.token_lifetime)
            except TokenError as exc:
                return Response(exc.status, _json({"error": exc.error, "error_description": exc.description}),
                                JSON, no_store)
        return Response(200, _json(body), JSON, no_store)

    # -- capability -----------------------------------------------------------------------------
    def _metadata(self) -> Response:
        with self._lock:
            types = self._store.types_held()
            now = format_instant(self._store.now())
        params = [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}]
        refs = [{"name": "patient", "type": "reference"}, {"name": "subject", "type": "reference"}]
        resources = []
        for t in types:
            entry = {"type": t, "versioning": "versioned", "readHistory": True,
                     "interaction": [{"code": c} for c in ("read", "vread", "history-instance", "search-type")],
                     "searchParam": params + ([] if t in ("Patient", "Group") else refs)}
            if t in ("Patient", "Group"):
                kind = "patient" if t == "Patient" else "group"
                entry["operation"] = [{"name": "export",
                                       "definition": f"http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{kind}-export"}]
            resources.append(entry)
        rest = {"mode": "server", "resource": resources,
                "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]}
        if self.auth == "smart":
            rest["security"] = {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "SMART-on-FHIR"}]}],
                "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                               "extension": [{"url": "token", "valueUri": self.token_url}]}]}
        elif self.auth == "basic":
            rest["security"] = {"service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                   "restful-security-service", "code": "Basic"}]}]}
        statement = {
            "resourceType": "CapabilityStatement", "status": "active", "date": now, "kind": "instance",
            "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
            "software": {"name": "FhirTestServer (TEST ONLY, not for production)", "version": "1.0"},
            "implementation": {"description": "In-memory FHIR R4 test server", "url": self.url},
            "fhirVersion": "4.0.1", "format": ["json"], "rest": [rest]}
        return Response(200, _json(statement))

    def _smart_configuration(self) -> Response:
        config = {
            "issuer": self.url,
            "token_endpoint": self.token_url,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": list(SUPPORTED_SCOPES),
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        }
        return Response(200, _json(config), JSON)

    # -- read -----------------------------------------------------------------------------------
    def _record(self, rtype: str, rid: str) -> Record:
        if not _ID.match(rid):
            raise bad_request(f"invalid resource id {rid!r}")
        record = self._store.get(rtype, rid)
        if record is None:
            raise not_found(f"{rtype}/{rid} is not known")
        return record

    @staticmethod
    def _resource_response(resource: dict, at: datetime) -> Response:
        return Response(200, _json(resource), FHIR_JSON,
                        [("ETag", f'W/"{resource["meta"]["versionId"]}"'),
                         ("Last-Modified", format_datetime(at, usegmt=True))])

    def _read(self, req: Request, rtype: str, rid: str) -> Response:
        self._authorize(req, rtype, "r")
        with self._lock:
            record = self._record(rtype, rid)
            if record.deleted:
                return outcome(410, "deleted", f"{rtype}/{rid} has been deleted")
            return self._resource_response(record.current.resource, record.last_updated)

    def _vread(self, req: Request, rtype: str, rid: str, vid: str) -> Response:
        self._authorize(req, rtype, "r")
        with self._lock:
            record = self._record(rtype, rid)
            for v in record.versions:
                if str(v.version) == vid:
                    if v.resource is None:
                        return outcome(410, "deleted", f"{rtype}/{rid} version {vid} is a deletion")
                    return self._resource_response(v.resource, v.at)
        raise not_found(f"{rtype}/{rid} has no version {vid!r}")

    def _history(self, req: Request, rtype: str, rid: str) -> Response:
        self._authorize(req, rtype, "r")
        for k, _ in req.query:
            if k not in ("_format", "_pretty"):
                raise bad_request(f"parameter {k!r} is not supported on _history")
        with self._lock:
            record = self._record(rtype, rid)
            entries = []
            for i, v in reversed(list(enumerate(record.versions))):
                entry = {"fullUrl": f"{self.url}/{rtype}/{rid}"}
                if v.resource is None:
                    entry["request"] = {"method": "DELETE", "url": f"{rtype}/{rid}"}
                    entry["response"] = {"status": "204 No Content", "lastModified": format_instant(v.at)}
                else:
                    entry["resource"] = v.resource
                    first = i == 0 or record.versions[i - 1].resource is None
                    entry["request"] = {"method": "POST" if first else "PUT",
                                        "url": rtype if first else f"{rtype}/{rid}"}
                    entry["response"] = {"status": "201 Created" if first else "200 OK",
                                         "etag": f'W/"{v.version}"', "lastModified": format_instant(v.at)}
                entries.append(entry)
            bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                      "meta": {"lastUpdated": format_instant(self._store.now())}, "type": "history",
                      "total": len(entries), "link": [{"relation": "self", "url": self.root + req.target}],
                      "entry": entries}
        return Response(200, _json(bundle))

    # -- search ---------------------------------------------------------------------------------
    def _parse_search(self, rtype: str, pairs: list[tuple[str, str]]) -> tuple[int, Callable[[dict, datetime], bool]]:
        count, count_seen = self.page_size, False
        updated: list[tuple[str, datetime, datetime]] = []
        ids: list[set[str]] = []
        refs: list[tuple[str, set[tuple[str | None, str]]]] = []
        for name, value in pairs:
            base, _, modifier = name.partition(":")
            if base not in SEARCH_PARAMS:
                raise bad_request(f"unknown search parameter {name!r} for {rtype}; supported: "
                                  f"{', '.join(sorted(SEARCH_PARAMS))}")
            if modifier:
                raise bad_request(f"modifier :{modifier} of {base} is not supported")
            if base == "_count":
                if count_seen:
                    raise bad_request("_count given more than once")
                count_seen = True
                try:
                    count = int(value)
                except ValueError:
                    raise bad_request(f"_count must be a non-negative integer, not {value!r}") from None
                if count < 0:
                    raise bad_request(f"_count must be a non-negative integer, not {value!r}")
                count = min(count, MAX_COUNT)
            elif base == "_lastUpdated":
                prefix, rest = _PREFIX.match(value).groups()
                prefix = prefix or "eq"
                if prefix not in ("eq", "gt", "ge", "lt", "le"):
                    raise bad_request(f"_lastUpdated prefix {prefix!r} is not supported (use eq, gt, ge, lt, le)")
                try:
                    low, high = parse_fhir_datetime(rest)
                except ValueError as exc:
                    raise bad_request(f"_lastUpdated: {exc}") from None
                updated.append((prefix, low, high))
            elif base == "_id":
                values = {v for v in value.split(",") if v}
                if not values or not all(_ID.match(v) for v in values):
                    raise bad_request(f"invalid _id {value!r}")
                ids.append(values)
            elif base in ("patient", "subject"):
                if rtype in ("Patient", "Group"):
                    raise bad_request(f"{base} is not a search parameter of {rtype}")
                targets: set[tuple[str | None, str]] = set()
                for v in value.split(","):
                    key = reference_key(v) if "/" in v else (("Patient" if base == "patient" else None), v)
                    if not key or not key[1] or not _ID.match(key[1]) or base == "patient" and key[0] != "Patient":
                        raise bad_request(f"invalid {base} reference {v!r}")
                    targets.add(key)
                refs.append((base, targets))
            elif base == "_format" and value not in JSON_FORMATS:
                raise bad_request(f"_format {value!r} is not supported (JSON only)")
            elif base == "_total" and value not in ("none", "estimate", "accurate"):
                raise bad_request(f"invalid _total {value!r}")

        def matches(resource: dict, at: datetime) -> bool:
            for prefix, low, high in updated:
                ok = {"eq": low <= at < high, "ge": at >= low, "gt": at >= high,
                      "lt": at < low, "le": at < high}[prefix]
                if not ok:
                    return False
            if any(resource.get("id") not in values for values in ids):
                return False
            for name, targets in refs:
                if name == "patient":
                    if not any(("Patient", pid) in targets for pid in patient_refs(resource)):
                        return False
                else:
                    ref = resource.get("subject")
                    key = reference_key(ref.get("reference")) if isinstance(ref, dict) else None
                    if key is None or not any(t == key or t[0] is None and t[1] == key[1] for t in targets):
                        return False
            return True

        return count, matches

    def _search(self, req: Request, rtype: str) -> Response:
        self._authorize(req, rtype, "s")
        pairs = list(req.query)
        if req.method == "POST":
            if not req.headers.get("content-type", "").lower().startswith("application/x-www-form-urlencoded"):
                raise bad_request("POST _search needs an application/x-www-form-urlencoded body")
            pairs += parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)
        count, matches = self._parse_search(rtype, pairs)
        self_url = self.root + req.target if req.method == "GET" else f"{self.url}/{rtype}?{urlencode(pairs)}"
        with self._lock:
            records = self._store.all_records(rtype)
            hits = [r.id for r in records if not r.deleted and matches(r.current.resource, r.last_updated)]
            # Bundle.total is deliberately unreliable: it also counts deleted resources that used to match.
            stale = sum(1 for r in records if r.deleted and matches(r.last_content or {}, r.last_updated))
            search_id = secrets.token_hex(8)
            self._searches[search_id] = (rtype, hits)
            return self._page(search_id, 0, count, self_url, total=len(hits) + stale)

    def _page_token(self, search_id: str, offset: int, count: int) -> str:
        key = (search_id, offset, count)
        token = self._page_tokens.get(key)
        if token is None:
            token = self._page_tokens[key] = secrets.token_urlsafe(12)
            self._pages[token] = key
        return token

    def _page(self, search_id: str, offset: int, count: int, self_url: str, total: int | None) -> Response:
        rtype, ids = self._searches[search_id]
        entries = []
        for rid in ids[offset:offset + count]:
            record = self._store.get(rtype, rid)
            if record is not None and not record.deleted:  # deleted since the search: skipped
                entries.append({"fullUrl": f"{self.url}/{rtype}/{rid}", "resource": record.current.resource,
                                "search": {"mode": "match"}})
        links = [{"relation": "self", "url": self_url}]
        if count and offset + count < len(ids):
            links.append({"relation": "next",
                          "url": f"{self.url}?_getpages={self._page_token(search_id, offset + count, count)}"})
        bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()),
                  "meta": {"lastUpdated": format_instant(self._store.now())}, "type": "searchset"}
        if total is not None:
            bundle["total"] = total
        bundle["link"] = links
        if entries:
            bundle["entry"] = entries
        return Response(200, _json(bundle))

    def _getpages(self, req: Request) -> Response:
        for k, _ in req.query:
            if k not in ("_getpages", "_format", "_pretty"):
                raise bad_request(f"parameter {k!r} cannot be combined with _getpages")
        tokens = req.values("_getpages")
        if len(tokens) != 1:
            raise bad_request("exactly one _getpages is allowed")
        with self._lock:
            key = self._pages.get(tokens[0])
        if key is None:
            self._authenticate(req)
            raise not_found(f"unknown page token {tokens[0]!r}")
        search_id, offset, count = key
        self._authorize(req, self._searches[search_id][0], "s")
        with self._lock:
            return self._page(search_id, offset, count, f"{self.url}?_getpages={tokens[0]}", total=None)

    # -- bulk data export -----------------------------------------------------------------------
    def _kickoff(self, req: Request, level: str, group_id: str | None = None) -> Response:
        grant = self._authenticate(req)
        prefer = [p.strip().lower() for p in req.headers.get("prefer", "").split(",")]
        if "respond-async" not in prefer:
            raise bad_request("$export needs the header 'Prefer: respond-async'")
        types: list[str] = []
        since = None
        for name, value in req.query:
            if name not in EXPORT_PARAMS:
                raise bad_request(f"$export parameter {name!r} is not supported; supported: "
                                  f"{', '.join(sorted(EXPORT_PARAMS))}")
            if name == "_type":
                for t in (t.strip() for t in value.split(",")):
                    if t not in R4_RESOURCE_TYPES:
                        raise bad_request(f"_type: {t!r} is not an R4 resource type")
                    if t not in types:
                        types.append(t)
            elif name == "_since":
                if since is not None:
                    raise bad_request("_since given more than once")
                try:
                    since = parse_fhir_datetime(value)[0]
                except ValueError as exc:
                    raise bad_request(f"_since: {exc}") from None
            elif name == "_outputFormat" and value not in OUTPUT_FORMATS:
                raise bad_request(f"_outputFormat {value!r} is not supported (use application/fhir+ndjson)")
        for t in types:
            if not grant.permits(t, "r"):
                raise HttpError(outcome(403, "forbidden", f"the access token's scope does not permit read of {t}"))
        with self._lock:
            job = self._build_job(req, level, group_id, types, since, grant)
            self._jobs[job.id] = job
        status_url = f"{self.url}/$export-poll-status?_jobId={job.id}"
        return outcome(202, "informational", f"export job {job.id} accepted; poll {status_url}",
                       severity="information", headers=[("Content-Location", status_url)])

    def _build_job(self, req: Request, level: str, group_id: str | None, types: list[str],
                   since: datetime | None, grant: Grant) -> ExportJob:
        """Snapshot the export at kick-off (caller holds the lock)."""
        notes: list[tuple[str, str, str]] = []  # (severity, code, diagnostics)
        members: set[str] | None = None
        if level == "group":
            group = self._record("Group", group_id or "")
            if group.deleted:
                raise HttpError(outcome(410, "deleted", f"Group/{group_id} has been deleted"))
            members = set()
            for member in group.current.resource.get("member") or []:
                key = reference_key(((member or {}).get("entity") or {}).get("reference"))
                if key and key[0] == "Patient":
                    members.add(key[1])
                    found = self._store.get("Patient", key[1])
                    if found is None or found.deleted:
                        notes.append(("warning", "not-found", f"Group/{group_id} member Patient/{key[1]} not found"))

        def in_scope(resource: dict | None) -> bool:
            if resource is None:
                return False
            if level == "system":
                return True
            refs = patient_refs(resource)
            return bool(refs) if members is None else bool(refs & members)

        requested = bool(types)
        if not requested:
            held = sorted(self._store.records)
            types = [t for t in held if grant.permits(t, "r")]
            omitted = [t for t in held if t not in types]
            if omitted:
                notes.append(("warning", "forbidden",
                              f"types not exported because the access token's scope does not permit them: "
                              f"{', '.join(omitted)}"))
        tx = self._store.transaction_time()
        job_id = secrets.token_hex(12)
        file_url = f"{self.url}/$export-file/{job_id}"
        size = self.export_file_size
        files: dict[str, tuple[bytes, str | None]] = {}
        output, deleted, errors = [], [], []
        for t in types:
            records = self._store.all_records(t)
            live = [r.current.resource for r in records
                    if not r.deleted and (since is None or r.last_updated > since) and in_scope(r.current.resource)]
            for n, i in enumerate(range(0, len(live), size)):
                chunk = live[i:i + size]
                name = f"{t}.{n:03d}.ndjson"
                files[name] = (_ndjson(chunk), t)
                output.append({"type": t, "url": f"{file_url}/{name}", "count": len(chunk)})
            gone = []
            if since is not None:
                gone = [r for r in records if r.deleted and r.last_updated > since and in_scope(r.last_content)]
                for n, i in enumerate(range(0, len(gone), size)):
                    bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "transaction",
                              "entry": [{"request": {"method": "DELETE", "url": f"{t}/{r.id}"}}
                                        for r in gone[i:i + size]]}
                    name = f"deleted-{t}.{n:03d}.ndjson"
                    files[name] = (_ndjson([bundle]), t)
                    deleted.append({"type": "Bundle", "url": f"{file_url}/{name}"})
            if requested and not live and not gone:
                notes.append(("information", "informational", f"no {t} resources matched the export"))
        if notes:
            name = "error.000.ndjson"
            files[name] = (_ndjson({"resourceType": "OperationOutcome", "issue": [
                {"severity": s, "code": c, "diagnostics": d}]} for s, c, d in notes), None)
            errors.append({"type": "OperationOutcome", "url": f"{file_url}/{name}", "count": len(notes)})
        manifest = {"transactionTime": format_instant(tx), "request": self.root + req.target,
                    "requiresAccessToken": self.auth != "none", "output": output, "deleted": deleted,
                    "error": errors}
        return ExportJob(job_id, manifest, files)

    def _status(self, req: Request) -> Response:
        self._authenticate(req)
        job_ids = req.values("_jobId")
        if len(job_ids) != 1 or any(k != "_jobId" for k, _ in req.query):
            raise bad_request("the status URL takes exactly one _jobId")
        with self._lock:
            job = self._jobs.get(job_ids[0])
            if job is None:
                raise not_found(f"unknown or cancelled export job {job_ids[0]!r}")
            if req.method == "DELETE":
                del self._jobs[job.id]
                return outcome(202, "informational", f"export job {job.id} cancelled", severity="information")
            if job.polls < self.export_polls:
                job.polls += 1
                return Response(202, b"", None, [("X-Progress", f"in progress ({job.polls}/{self.export_polls})"),
                                                 ("Retry-After", str(self.export_retry_after))])
            body = _json(job.manifest)
        return Response(200, body, JSON, [("Expires", formatdate(time.time() + 3600, usegmt=True))])

    def _file(self, req: Request, job_id: str, name: str) -> Response:
        grant = self._authenticate(req) if self.auth != "none" else None
        with self._lock:
            job = self._jobs.get(job_id)
            found = job.files.get(name) if job is not None else None
        if found is None:
            raise not_found(f"unknown export file {job_id}/{name}")
        data, rtype = found
        if grant is not None and rtype is not None and not grant.permits(rtype, "r"):
            raise HttpError(outcome(403, "forbidden", f"the access token's scope does not permit read of {rtype}"))
        return Response(200, data, FHIR_NDJSON)


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1/localhost (TEST ONLY); returns (cert, key) PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FhirTestServer 127.0.0.1 (TEST ONLY)")])
    now = datetime.now(timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
