"""HTTP for FHIR servers: retries with backoff, Retry-After, one credential refresh on 401/403, errors.

`FhirHttp` wraps one `httpx.Client`. It retries what a later attempt can cure (429, 408, 5xx other than
501/505, timeouts, refused or reset connections, bodies cut short) at most `max_retries` times, waiting
as the server asks (Retry-After as delta-seconds or an HTTP-date, RFC 9110 §10.2.3) or else with capped
exponential backoff and jitter. A 401/403 makes the auth drop its credential once (`auth.invalidate()`),
when it can get a fresh one; a second refusal is an `AuthError`. Other 4xx are `ServerError`s carrying
the OperationOutcome's text. Nothing logged here holds resource content, credentials or query strings.
"""
from __future__ import annotations

import logging
import random
import re
import ssl
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from etl.extract.errors import AuthError, ExtractError, ServerError, UnreachableError

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"
USER_AGENT = "dlm-registry-extract/0.1"
_ABSOLUTE = re.compile(r"^https?://", re.IGNORECASE)
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


# -- helpers shared by the sources ------------------------------------------------------------------
def loggable(url: str) -> str:
    """The URL without user info, query string or fragment (safe for logs and record locations)."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP-date (IMF-fixdate and the obsolete forms) as an aware UTC datetime, else None."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def retry_after_seconds(response: httpx.Response, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks to wait (Retry-After delta-seconds or HTTP-date), else None.

    An HTTP-date is measured against the response's own Date header when it has one (no clock skew),
    else against the local clock.
    """
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    when = parse_http_date(value)
    if when is None:
        return None
    reference = parse_http_date(response.headers.get("Date"))
    base = reference.timestamp() if reference is not None else now()
    return max(0.0, when.timestamp() - base)


def outcome_text(response: httpx.Response) -> str:
    """The diagnostics / details text of an OperationOutcome body (or an OAuth error), else ''."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return ""
    if not isinstance(body, dict):
        return ""
    if body.get("resourceType") == "OperationOutcome":
        texts = []
        for issue in body.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            text = issue.get("diagnostics") or ((issue.get("details") or {}).get("text")
                                                if isinstance(issue.get("details"), dict) else None)
            text = text or issue.get("code")
            if isinstance(text, str) and text.strip():
                texts.append(text.strip())
        return "; ".join(texts)[:400]
    if isinstance(body.get("error"), str):  # RFC 6749 §5.2 token endpoint error
        description = body.get("error_description")
        return (body["error"] + (f": {description}" if isinstance(description, str) and description else ""))[:400]
    return ""


def _www_authenticate_error(response: httpx.Response) -> str:
    match = re.search(r'error="?([A-Za-z0-9_\-]+)"?', response.headers.get("WWW-Authenticate", ""))
    return match.group(1) if match else ""


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or (500 <= status <= 599 and status not in (501, 505))


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:200]
    return text or type(exc).__name__


def _tls_failure(exc: Exception) -> bool:
    seen, current = 0, exc
    while current is not None and seen < 10:
        if isinstance(current, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        current, seen = current.__cause__ or current.__context__, seen + 1
    return False


def _ssl_context(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    if isinstance(verify, (bool, ssl.SSLContext)):
        return verify
    try:
        return ssl.create_default_context(cafile=str(verify))
    except (OSError, ssl.SSLError) as exc:
        raise ExtractError(f"CA bundle {verify} cannot be used: {_reason(exc)}") from None


class FhirHttp:
    """One FHIR server's HTTP client (see the module docstring).

    `auth` gives request headers (`headers()`), may drop a stale credential (`invalidate() -> bool`,
    True when a fresh one will be used) and may want the client itself (`bind(http)`, e.g. SMART
    discovery and token requests). Credentials go only to the base URL's origin unless a call says
    `authenticate=True`. `stats` counts requests, retries by cause and credential refreshes.
    """

    def __init__(self, base_url: str, auth=None, *, verify: bool | str | ssl.SSLContext = True,
                 timeout: float = 60, max_retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0,
                 max_retry_after: float = 300.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time, seed: int | None = None,
                 transport: httpx.BaseTransport | None = None):
        if not _ABSOLUTE.match(base_url or ""):
            raise ExtractError(f"FHIR base URL must start with http:// or https://: {loggable(base_url or '')}")
        from etl.extract.auth import NoAuth

        self.base_url = base_url.rstrip("/")
        self.auth = auth if auth is not None else NoAuth()
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.max_retry_after = max_retry_after
        self.sleep, self.clock = sleep, clock
        self.random = random.Random(seed)
        self.stats: Counter[str] = Counter()
        if verify is False:
            log.warning("TLS certificate verification is OFF for %s", loggable(self.base_url))
        if (origin(self.base_url)[0] == "http" and not isinstance(self.auth, NoAuth)
                and origin(self.base_url)[1] not in _LOOPBACK):
            log.warning("credentials are sent without TLS to %s", loggable(self.base_url))
        # httpx logs every request URL with its query string at INFO; keep those out of the logs.
        httpx_log = logging.getLogger("httpx")
        if httpx_log.level == logging.NOTSET:
            httpx_log.setLevel(logging.WARNING)
        self.client = httpx.Client(verify=_ssl_context(verify) if transport is None else True,
                                   timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=True,
                                   headers={"User-Agent": USER_AGENT})
        if hasattr(self.auth, "bind"):
            self.auth.bind(self)

    def __repr__(self) -> str:
        return f"FhirHttp({loggable(self.base_url)!r}, auth={self.auth!r})"

    # -- public API ---------------------------------------------------------------------------------
    def resolve(self, url_or_path: str) -> str:
        """An absolute URL as given; a path relative to the base URL."""
        text = str(url_or_path)
        return text if _ABSOLUTE.match(text) else f"{self.base_url}/{text.lstrip('/')}"

    def get(self, url_or_path: str, params=None, headers: dict | None = None, stream: bool = False, *,
            what: str | None = None, authenticate: bool | None = None) -> httpx.Response:
        """GET; a 2xx response (read, or open for streaming when `stream`: close it), else an error."""
        return self.request("GET", url_or_path, params=params, headers=headers, stream=stream, what=what,
                            authenticate=authenticate)

    def delete(self, url: str, *, headers: dict | None = None, what: str | None = None) -> httpx.Response:
        return self.request("DELETE", url, headers=headers, what=what)

    def post_form(self, url: str, data: dict, *, headers: dict | None = None, what: str | None = None,
                  authenticate: bool = False) -> httpx.Response:
        """POST application/x-www-form-urlencoded (token endpoints: no credentials unless asked)."""
        return self.request("POST", url, data=data, headers={"Accept": "application/json", **(headers or {})},
                            what=what, authenticate=authenticate)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> FhirHttp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff for retry number `attempt` (0-based), capped, with jitter in [d/2, d]."""
        delay = min(self.max_backoff, self.backoff * (2 ** min(attempt, 32)))
        return delay / 2 + self.random.random() * delay / 2

    def wait_before_retry(self, attempt: int, cause: str, what: str, reason: str, delay: float | None = None) -> None:
        """Count, log and sleep before retry number `attempt` (0-based)."""
        wait = self.backoff_delay(attempt) if delay is None else min(delay, self.max_retry_after)
        self.stats["retries"] += 1
        self.stats[f"retry:{cause}"] += 1
        log.warning("%s: %s; retry %d/%d in %.1f s", what, reason, attempt + 1, self.max_retries, wait)
        self.sleep(wait)

    def request(self, method: str, url_or_path: str, *, params=None, headers: dict | None = None, data=None,
                stream: bool = False, what: str | None = None, authenticate: bool | None = None) -> httpx.Response:
        url = self.resolve(url_or_path)
        what = what or f"{method} {loggable(url)}"
        use_auth = self.uses_auth(url, authenticate)
        refreshed = False
        retries = 0
        while True:
            delay: float | None = None
            status: int | None = None
            request_headers = {"Accept": FHIR_JSON, **(headers or {})}
            if use_auth:
                request_headers.update(self.auth.headers())
            self.stats["requests"] += 1
            try:
                request = self.client.build_request(method, url, params=params, headers=request_headers, data=data)
                response = self.client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                cause, reason = "timeout", f"timed out ({type(exc).__name__})"
            except httpx.ConnectError as exc:
                if _tls_failure(exc):
                    raise UnreachableError(f"FHIR server unreachable at {self._where(url)}: TLS certificate "
                                           f"verification failed (give the CA bundle)") from None
                cause, reason = "connect", _reason(exc)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.ProxyError) as exc:
                raise UnreachableError(f"FHIR server unreachable at {self._where(url)}: {_reason(exc)}") from None
            except httpx.TooManyRedirects:
                raise ServerError(f"FHIR server error on {what}: too many redirects") from None
            except httpx.TransportError as exc:
                cause, reason = "connection", _reason(exc)
            else:
                status = response.status_code
                if status in (401, 403):
                    detail = self._read_detail(response)
                    if authenticate is False:  # e.g. a token endpoint: its caller reads the refusal
                        raise ServerError(f"FHIR server error {status} on {what}: {detail or 'refused'}",
                                          status, detail)
                    if use_auth and not refreshed and self.auth.invalidate():
                        refreshed = True
                        self.stats["auth_refresh"] += 1
                        log.info("%s: %d; refreshing the credential once", what, status)
                        continue
                    raise self._auth_error(response, status, what, detail, use_auth)
                if _retryable_status(status):
                    delay = retry_after_seconds(response, self.clock)
                    detail = self._read_detail(response)
                    cause, reason = str(status), f"{status} {detail or response.reason_phrase}"
                elif status >= 400:
                    detail = self._read_detail(response)
                    text = detail or f"{response.reason_phrase or 'error'} (no OperationOutcome)"
                    raise ServerError(f"FHIR server error {status} on {what}: {text}", status, detail)
                elif stream:
                    return response
                else:
                    try:
                        response.read()
                        return response
                    except (httpx.TransportError, httpx.DecodingError) as exc:
                        status = None
                        cause, reason = "incomplete", f"response body cut short ({_reason(exc)})"
                    finally:
                        response.close()
            if retries >= self.max_retries:
                raise self._give_up(url, what, status, reason, retries)
            self.wait_before_retry(retries, cause, what, reason, delay)
            retries += 1

    def iter_lines(self, url: str, *, headers: dict | None = None, authenticate: bool | None = None,
                   what: str | None = None) -> Iterator[tuple[int, bytes]]:
        """Stream a (possibly large) NDJSON download as (line number, bytes), in constant memory.

        Lines are split on b"\\n" only (U+2028 inside a JSON string is not a line break); blank lines are
        skipped. A download cut short is fetched again and its lines already yielded are skipped (at
        most `max_retries` times). A gzip file served without Content-Encoding is inflated.
        """
        what = what or f"GET {loggable(url)}"
        done = 0        # lines handled so far (the next download skips them)
        failures = progress = 0
        while True:
            response = self.get(url, headers=headers, stream=True, what=what, authenticate=authenticate)
            number = 0
            pending = b""
            inflate = None
            first = True
            try:
                for chunk in response.iter_bytes():
                    if first and chunk:
                        first = False
                        # a .ndjson.gz sent as is (no Content-Encoding): NDJSON never starts with 0x1f 0x8b
                        if chunk.startswith(b"\x1f\x8b") and not response.headers.get("Content-Encoding"):
                            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    if inflate is not None:
                        chunk = inflate.decompress(chunk)
                    pieces = (pending + chunk).split(b"\n")
                    pending = pieces.pop()
                    for line in pieces:
                        number += 1
                        if number > done:
                            done = number
                            if line.strip():
                                yield number, line.rstrip(b"\r")
                if inflate is not None:
                    pending += inflate.flush()
                    if not inflate.eof:
                        raise httpx.DecodingError("gzip stream ends early")
                if pending.strip():
                    number += 1
                    if number > done:
                        done = number
                        yield number, pending.rstrip(b"\r")
                return
            except (httpx.TransportError, httpx.DecodingError, zlib.error) as exc:
                if done > progress:  # a retry that got further starts the count afresh
                    failures, progress = 0, done
                if failures >= self.max_retries:
                    raise UnreachableError(f"FHIR server unreachable at {self._where(url)}: download of "
                                           f"{loggable(url)} kept breaking off ({_reason(exc)})") from None
                self.wait_before_retry(failures, "incomplete", what, f"download cut short after line {done}")
                failures += 1
            finally:
                response.close()

    # -- internals ----------------------------------------------------------------------------------
    def uses_auth(self, url: str, authenticate: bool | None = None) -> bool:
        return authenticate if authenticate is not None else same_origin(url, self.base_url)

    def _where(self, url: str) -> str:
        return loggable(self.base_url) if same_origin(url, self.base_url) else loggable(url)

    @staticmethod
    def _read_detail(response: httpx.Response) -> str:
        try:
            response.read()
        except (httpx.TransportError, httpx.DecodingError):
            return ""
        finally:
            response.close()
        return outcome_text(response)

    def _auth_error(self, response: httpx.Response, status: int, what: str, detail: str,
                    use_auth: bool) -> AuthError:
        from etl.extract.auth import NoAuth

        if not use_auth or isinstance(self.auth, NoAuth):
            return AuthError(f"FHIR server requires authentication ({status} on {what}"
                             f"{': ' + detail if detail else ''}); set DLMREG_FHIR_AUTH and its credentials")
        if status == 403:
            return AuthError(f"FHIR server refused access (403 on {what}{': ' + detail if detail else ''})")
        cause = _www_authenticate_error(response)
        text = ": ".join(t for t in (cause, detail) if t) or "no reason given"
        return AuthError(f"FHIR server refused the credentials ({status} {text})")

    def _give_up(self, url: str, what: str, status: int | None, reason: str, retries: int) -> ExtractError:
        after = f" (gave up after {retries} retries)"
        if status is not None:
            text = reason.split(" ", 1)[1] if " " in reason else reason
            return ServerError(f"FHIR server error {status} on {what}: {text}{after}", status, text)
        return UnreachableError(f"FHIR server unreachable at {self._where(url)}: {reason}{after}")
