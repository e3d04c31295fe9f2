"""Credentials for FHIR servers: none, HTTP Basic, a static bearer token, SMART Backend Services.

An auth object gives the headers of each request (`headers()`), may drop a stale credential when the
server refuses it (`invalidate() -> bool`: True when the next `headers()` brings a fresh one) and may
ask for the `FhirHttp` it serves (`bind(http)`). Reprs never show passwords, tokens or keys.

SMART Backend Services (HL7 SMART App Launch 2.x, "backend services"): an OAuth 2.0 client_credentials
grant authenticated by a JWT client assertion signed with the client's private key (RS384 or ES384).
The access token is cached and fetched again `refresh_margin` seconds before it expires, so long
exports keep working; a 401 makes `FhirHttp` call `invalidate()` and retry once.
"""
from __future__ import annotations

import base64
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from etl.extract.errors import AuthError, ExtractError, ServerError
from etl.extract.http import _ABSOLUTE, loggable

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SMART_ALGS = ("RS384", "ES384")
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


class Auth:
    """No credentials; the base of the others."""

    def headers(self) -> dict[str, str]:
        return {}

    def invalidate(self) -> bool:
        """Drop the current credential; True when a fresh one will be used (worth a retry)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoAuth(Auth):
    pass


class BasicAuth(Auth):
    """HTTP Basic (RFC 7617), UTF-8."""

    def __init__(self, user: str, password: str):
        if not user or password is None:
            raise ExtractError("basic auth needs a user name and a password")
        if ":" in user:
            raise ExtractError("basic auth user names cannot contain ':'")
        self.user = user
        self.__header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.__header}

    def __repr__(self) -> str:
        return f"BasicAuth(user={self.user!r}, password=<hidden>)"


class BearerAuth(Auth):
    """A static access token (obtained outside the registry); it cannot be refreshed."""

    def __init__(self, token: str):
        if not token or not token.strip():
            raise ExtractError("bearer auth needs a token")
        self.__token = token.strip()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.__token}"}

    def __repr__(self) -> str:
        return "BearerAuth(token=<hidden>)"


def _load_private_key(pem: bytes | str, alg: str):
    if alg not in SMART_ALGS:
        raise ExtractError(f"SMART signing algorithm must be one of {', '.join(SMART_ALGS)}, not {alg!r}")
    data = pem.encode("utf-8") if isinstance(pem, str) else bytes(pem)
    if b"\\n" in data and b"\n" not in data.strip():   # PEM pasted into an env file with escaped newlines
        data = data.replace(b"\\n", b"\n")
    try:
        key = serialization.load_pem_private_key(data.strip() + b"\n", password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted" if "encrypted" in str(exc).lower() or "password" in str(exc).lower() else \
            "it is not a PEM private key"
        raise ExtractError(f"the SMART private key cannot be used: {reason}") from None
    if alg == "RS384" and not isinstance(key, rsa.RSAPrivateKey):
        raise ExtractError("the SMART private key is not an RSA key (alg RS384)")
    if alg == "ES384" and not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"):
        raise ExtractError("the SMART private key is not an EC P-384 key (alg ES384)")
    return key


class SmartBackendAuth(Auth):
    """SMART Backend Services: client_credentials with a private_key_jwt client assertion.

    `token_url` None: discovered from `{base}/.well-known/smart-configuration` (`token_endpoint`), else
    from the CapabilityStatement's oauth-uris extension. `http_client` is the `FhirHttp` used for
    discovery and token requests (set by `FhirHttp` when the auth is given to it). `clock` returns
    epoch seconds (injectable for tests).
    """

    def __init__(self, client_id: str, private_key_pem: bytes | str, kid: str, alg: str = "RS384",
                 scope: str = "system/*.read", token_url: str | None = None, http_client=None, *,
                 refresh_margin: float = 60.0, assertion_lifetime: int = 300,
                 clock: Callable[[], float] = time.time):
        if not client_id or not kid:
            raise ExtractError("SMART backend auth needs a client id and a key id (kid)")
        self.client_id, self.kid, self.alg, self.scope = client_id, kid, alg, scope
        self.__key = _load_private_key(private_key_pem, alg)
        if token_url is not None and not _ABSOLUTE.match(token_url):
            raise ExtractError(f"SMART token URL must be absolute: {loggable(token_url)}")
        self.token_url = token_url
        self.refresh_margin, self.assertion_lifetime, self.clock = refresh_margin, assertion_lifetime, clock
        self.http = http_client
        self.__token: str | None = None
        self.refresh_at = 0.0
        self.expires_at = 0.0
        self.granted_scope: str | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"SmartBackendAuth(client_id={self.client_id!r}, kid={self.kid!r}, alg={self.alg!r}, "
                f"scope={self.scope!r}, token_url={loggable(self.token_url) if self.token_url else None!r}, "
                f"private_key=<hidden>)")

    def bind(self, http) -> None:
        if self.http is None:
            self.http = http

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token()}"}

    def invalidate(self) -> bool:
        with self._lock:
            self.__token = None
        return True

    def access_token(self) -> str:
        """The cached token, or a new one when there is none or it expires within the refresh margin."""
        with self._lock:
            if self.__token is None or self.clock() >= self.refresh_at:
                self._fetch_token()
            return self.__token

    def token_endpoint(self) -> str:
        with self._lock:
            if self.token_url is None:
                self.token_url = self._discover()
            return self.token_url

    def client_assertion(self) -> str:
        """A signed JWT naming this client (iss = sub = client id), for the token endpoint (aud)."""
        now = int(self.clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_endpoint(),
                  "exp": now + self.assertion_lifetime, "iat": now, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self.__key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"})

    # -- internals ----------------------------------------------------------------------------------
    def _need_http(self):
        if self.http is None:
            raise ExtractError("SMART backend auth is not attached to a FHIR server client")
        return self.http

    def _discover(self) -> str:
        http = self._need_http()
        base = http.base_url
        try:
            response = http.get(f"{base}/.well-known/smart-configuration", headers={"Accept": "application/json"},
                                authenticate=False, what="SMART configuration discovery")
            endpoint = _json(response).get("token_endpoint")
            if isinstance(endpoint, str) and _ABSOLUTE.match(endpoint):
                log.info("SMART token endpoint %s (from .well-known/smart-configuration)", loggable(endpoint))
                return endpoint
        except ServerError as exc:
            log.info("no SMART configuration at %s (%s); trying the CapabilityStatement", loggable(base), exc.status)
        try:
            statement = _json(http.get(f"{base}/metadata", authenticate=False, what="CapabilityStatement"))
        except ServerError:
            statement = {}
        for rest in statement.get("rest") or []:
            for ext in ((rest or {}).get("security") or {}).get("extension") or []:
                if (ext or {}).get("url") != OAUTH_URIS:
                    continue
                for sub in ext.get("extension") or []:
                    value = (sub or {}).get("valueUri")
                    if (sub or {}).get("url") == "token" and isinstance(value, str) and _ABSOLUTE.match(value):
                        log.info("SMART token endpoint %s (from the CapabilityStatement)", loggable(value))
                        return value
        raise ExtractError(f"no SMART token endpoint found at {loggable(base)} (.well-known/smart-configuration "
                           f"or CapabilityStatement); set DLMREG_SMART_TOKEN_URL")

    def _fetch_token(self) -> None:
        http = self._need_http()
        started = self.clock()
        form = {"grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.client_assertion()}
        try:
            response = http.post_form(self.token_endpoint(), form, what="SMART token request")
        except ServerError as exc:
            if exc.status in (400, 401, 403):
                raise AuthError(f"FHIR server refused the credentials ({exc.status} "
                                f"{exc.detail or 'no reason given'})") from None
            raise
        body = _json(response)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError("FHIR server's token endpoint answered without an access_token")
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            log.warning("SMART token_type is %r, used as a bearer token", body.get("token_type"))
        try:
            lifetime = float(body.get("expires_in", 300))
        except (TypeError, ValueError):
            lifetime = 300.0
        lifetime = max(lifetime, 1.0)
        self.__token = token
        self.expires_at = started + lifetime
        self.refresh_at = self.expires_at - min(self.refresh_margin, lifetime / 2)
        self.granted_scope = body.get("scope") if isinstance(body.get("scope"), str) else None
        log.info("SMART access token obtained (expires in %d s; scope %s)", lifetime, self.granted_scope or "?")


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        raise ExtractError(f"FHIR server answered {loggable(str(response.request.url))} with a body "
                           f"that is not JSON") from None
    return body if isinstance(body, dict) else {}


def auth_from_env(env: Mapping[str, str] = os.environ) -> Auth:
    """The auth named by DLMREG_FHIR_AUTH (none | basic | bearer | smart) and its variables.

    basic: DLMREG_FHIR_USERNAME, DLMREG_FHIR_PASSWORD. bearer: DLMREG_FHIR_TOKEN.
    smart: DLMREG_SMART_CLIENT_ID, DLMREG_SMART_KID, DLMREG_SMART_PRIVATE_KEY (PEM text) or
    DLMREG_SMART_PRIVATE_KEY_FILE; optional DLMREG_SMART_ALG (RS384), DLMREG_SMART_SCOPE
    (system/*.read), DLMREG_SMART_TOKEN_URL (else discovered).
    """
    mode = (env.get("DLMREG_FHIR_AUTH") or "none").strip().lower()

    def require(*names: str) -> None:
        missing = [n for n in names if not (env.get(n) or "").strip()]
        if missing:
            raise ExtractError(f"DLMREG_FHIR_AUTH={mode} needs {', '.join(missing)}")

    if mode == "none":
        return NoAuth()
    if mode == "basic":
        require("DLMREG_FHIR_USERNAME", "DLMREG_FHIR_PASSWORD")
        return BasicAuth(env["DLMREG_FHIR_USERNAME"], env["DLMREG_FHIR_PASSWORD"])
    if mode == "bearer":
        require("DLMREG_FHIR_TOKEN")
        return BearerAuth(env["DLMREG_FHIR_TOKEN"])
    if mode == "smart":
        require("DLMREG_SMART_CLIENT_ID", "DLMREG_SMART_KID")
        pem: str | bytes | None = env.get("DLMREG_SMART_PRIVATE_KEY") or None
        key_file = (env.get("DLMREG_SMART_PRIVATE_KEY_FILE") or "").strip()
        if pem is None and not key_file:
            raise ExtractError("DLMREG_FHIR_AUTH=smart needs DLMREG_SMART_PRIVATE_KEY or DLMREG_SMART_PRIVATE_KEY_FILE")
        if pem is None:
            try:
                pem = Path(key_file).expanduser().read_bytes()
            except OSError as exc:
                raise ExtractError(f"DLMREG_SMART_PRIVATE_KEY_FILE {key_file} cannot be read: "
                                   f"{exc.strerror or type(exc).__name__}") from None
        return SmartBackendAuth(env["DLMREG_SMART_CLIENT_ID"].strip(), pem, env["DLMREG_SMART_KID"].strip(),
                                alg=(env.get("DLMREG_SMART_ALG") or "RS384").strip().upper(),
                                scope=(env.get("DLMREG_SMART_SCOPE") or "system/*.read").strip(),
                                token_url=(env.get("DLMREG_SMART_TOKEN_URL") or "").strip() or None)
    raise ExtractError(f"DLMREG_FHIR_AUTH must be none, basic, bearer or smart, not {mode!r}")
