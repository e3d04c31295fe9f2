"""SMART Backend Services (client_credentials + private_key_jwt) for the FHIR TEST server.

Not for production use: keys, assertions and access tokens live in memory only.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from tests.fhir_server.store import utc

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNING_ALGS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = timedelta(minutes=5)
SUPPORTED_SCOPES = ["system/*.read", "system/*.rs"]
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_SCOPE = re.compile(r"^system/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>read|write|\*|c?r?u?d?s?)$")


class TokenError(Exception):
    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


@dataclass(frozen=True)
class Grant:
    """What a request may do: ``scopes`` maps a type (or ``*``) to permission letters (``r``, ``s``)."""

    client_id: str | None
    scopes: dict[str, frozenset[str]] | None  # None: everything (auth "none", "bearer", "basic")
    expires: datetime | None = None

    def permits(self, rtype: str, perm: str) -> bool:
        if self.scopes is None:
            return True
        return any(perm in self.scopes.get(t, frozenset()) for t in (rtype, "*"))


def parse_scopes(text: str) -> tuple[list[str], dict[str, frozenset[str]]]:
    """Granted scope strings and their permissions; unsupported scopes are dropped (not granted)."""
    granted: list[str] = []
    perms: dict[str, set[str]] = {}
    for item in (text or "").split():
        m = _SCOPE.match(item)
        if not m or not m.group("perm"):
            continue
        perm = m.group("perm")
        letters = {"read": "rs", "*": "cruds", "write": "cud"}.get(perm, perm)
        granted.append(item)
        perms.setdefault(m.group("type"), set()).update(letters)
    return granted, {t: frozenset(p) for t, p in perms.items()}


def _public_jwk(jwk: dict) -> dict:
    if not isinstance(jwk, dict) or not jwk.get("kid") or jwk.get("kty") not in ("RSA", "EC"):
        raise ValueError("public_jwk must be an RSA or EC JWK with a 'kid'")
    if jwk["kty"] == "EC" and jwk.get("crv") != "P-384":
        raise ValueError("EC keys must use curve P-384 (ES384)")
    public = {k: v for k, v in jwk.items() if k not in _PRIVATE_JWK_MEMBERS}
    alg = "RS384" if public["kty"] == "RSA" else "ES384"
    jwt.PyJWK(public, algorithm=alg)  # raises if the key is malformed
    return public


class SmartAuth:
    """Registered clients, seen assertion ids and issued access tokens (caller holds the store lock)."""

    def __init__(self):
        self.clients: dict[str, dict[str, dict]] = {}  # client_id -> kid -> public JWK
        self.seen_jti: set[tuple[str, str]] = set()
        self.tokens: dict[str, Grant] = {}

    def register(self, client_id: str, jwk: dict) -> None:
        public = _public_jwk(jwk)
        self.clients.setdefault(client_id, {})[public["kid"]] = public

    def issue(self, form: dict[str, str], token_url: str, now: datetime, lifetime: int) -> dict:
        if form.get("grant_type") != "client_credentials":
            raise TokenError(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenError(400, "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            raise TokenError(400, "invalid_request", "client_assertion is required")
        if not form.get("scope"):
            raise TokenError(400, "invalid_scope", "scope is required")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenError(401, "invalid_client", f"malformed client_assertion: {exc}") from None
        alg, kid, iss = header.get("alg"), header.get("kid"), claims.get("iss")
        if alg not in SIGNING_ALGS:
            raise TokenError(401, "invalid_client", f"alg {alg!r} not allowed; use one of {SIGNING_ALGS}")
        if not isinstance(iss, str) or iss not in self.clients:
            raise TokenError(401, "invalid_client", f"unknown client (iss) {iss!r}")
        if form.get("client_id") not in (None, "", iss):
            raise TokenError(401, "invalid_client", "client_id does not match the assertion's iss")
        jwk = self.clients[iss].get(kid) if isinstance(kid, str) else None
        if jwk is None:
            raise TokenError(401, "invalid_client", f"no registered key with kid {kid!r} for client {iss!r}")
        if (alg == "RS384") != (jwk["kty"] == "RSA"):
            raise TokenError(401, "invalid_client", f"alg {alg} does not match the registered key type")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            claims = jwt.decode(assertion, key=key.key, algorithms=[alg], audience=token_url,
                                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                         "require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.InvalidAudienceError:
            raise TokenError(401, "invalid_client", f"aud must be the token endpoint {token_url}") from None
        except jwt.PyJWTError as exc:
            raise TokenError(401, "invalid_client", f"invalid client_assertion: {exc}") from None
        if claims.get("sub") != iss:
            raise TokenError(401, "invalid_client", "sub must equal iss (the client_id)")
        jti = claims["jti"]
        if (iss, jti) in self.seen_jti:
            raise TokenError(401, "invalid_client", f"jti {jti!r} already used (replay)")
        self.seen_jti.add((iss, jti))
        try:
            exp = datetime.fromtimestamp(float(claims["exp"]), tz=now.tzinfo)
        except (TypeError, ValueError, OverflowError):
            raise TokenError(401, "invalid_client", "exp is not a number") from None
        if exp <= now:
            raise TokenError(401, "invalid_client", "client_assertion has expired")
        if exp > now + MAX_ASSERTION_LIFETIME:
            raise TokenError(401, "invalid_client", "exp must be at most 5 minutes in the future")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and datetime.fromtimestamp(nbf, tz=now.tzinfo) > now + timedelta(seconds=60):
            raise TokenError(401, "invalid_client", "client_assertion is not yet valid (nbf)")
        granted, perms = parse_scopes(form["scope"])
        if not granted:
            raise TokenError(400, "invalid_scope", f"no grantable scope in {form['scope']!r}; "
                                                   "use system/<Type|*>.read or system/<Type|*>.rs")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = Grant(iss, perms, utc(now) + timedelta(seconds=lifetime))
        return {"access_token": token, "token_type": "bearer", "expires_in": lifetime, "scope": " ".join(granted)}

    def check(self, token: str | None, now: datetime) -> Grant | None:
        grant = self.tokens.get(token or "")
        if grant is None or grant.expires is None or grant.expires <= now:
            return None
        return grant
