"""FHIR REST search as a source: `GET [base]/[Type]?_count=N[&_lastUpdated=ge...]`, following next links.

Paging follows `Bundle.link[relation=next]` as opaque URLs (page URLs are never built; `Bundle.total`
is never read: servers count differently or wrongly). A resource seen twice in one run with the same
version (pages shift when the server's data changes during paging) is yielded once.

Reports whose attachments are given by URL get them inlined (etl.extract.attachments).

Windows: with `until`, the search also asks `_lastUpdated < until` (a scheduled run reads its data
interval, never "now"), and `until` is the new watermark.

Watermarks: `new_state()` gives, for each type read to the last page, the server's time when that
type's search started (the first response's Date header, else the local clock before the request); the
next run passes it back as `since` and asks for `_lastUpdated >= since - overlap`, so a resource
updated while the previous run paged is read again rather than missed. A page that cannot be read
(not JSON, not a Bundle, a next link to another server, a paging loop) is yielded as one record whose
`expected_type` starts with "!" (the caller quarantines it), ends that type's paging and puts the type
in `incomplete`, so the caller does not advance the watermarks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from urllib.parse import urljoin

from etl.extract.attachments import inline_attachments
from etl.extract.errors import ExtractError
from etl.extract.files import RawRecord
from etl.extract.http import FhirHttp, loggable, outcome_text, parse_http_date, same_origin

log = logging.getLogger(__name__)

_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")


def format_instant(moment: datetime) -> str:
    """UTC, whole seconds, 'Z' (safe in a query string and in `_lastUpdated`/`_since`)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date-time (a stored watermark); naive means UTC."""
    value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def check_types(types) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(types))
    bad = [t for t in types if not isinstance(t, str) or not _TYPE.match(t)]
    if bad or not types:
        raise ExtractError(f"resource types must be FHIR type names, not {bad or 'nothing'}")
    return types


def selected(resource_type: str, types: set[str] | None, exclude: set[str] | None) -> bool:
    return (types is None or resource_type in types) and not (exclude and resource_type in exclude)


class _Unreadable(Exception):
    def __init__(self, reason: str, text: str):
        super().__init__(reason)
        self.reason, self.text = reason, text


class RestSource:
    """Resources of `types` from a FHIR server's REST search (see the module docstring)."""

    def __init__(self, base_url: str, http: FhirHttp, types: tuple[str, ...], *, page_size: int = 200,
                 since: dict[str, str] | None = None, overlap_seconds: float = 300,
                 now: Callable[[], datetime] | None = None, invalid_page_retries: int = 2,
                 close_http: bool = True, until: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.types = check_types(types)
        if page_size < 1:
            raise ExtractError("page size must be at least 1")
        self.page_size = page_size
        self.since = dict(since) if since is not None else None
        try:  # a window's end (scheduled runs read one data interval): `_lastUpdated=lt<until>`
            self.until = format_instant(parse_instant(until)) if until else None
        except (ValueError, OverflowError):
            raise ExtractError(f"the window end {until!r} is not a date-time") from None
        self.overlap = timedelta(seconds=overlap_seconds)
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.invalid_page_retries = invalid_page_retries
        self.close_http = close_http
        self.incomplete: set[str] = set()
        self.deleted: list[tuple[str, str]] = []     # a search cannot see deletions
        self.warnings: list[str] = []                # OperationOutcome entries of search pages
        self.counts: dict[str, int] = {}             # resources yielded per type
        self.duplicates = 0
        self._started: dict[str, str] = {}           # fully read type -> server time at its search start
        self._bounds = {t: self._lower_bound(t) for t in self.types}

    @property
    def is_snapshot(self) -> bool:
        """A full pull (no watermarks given): what the server does not return has been deleted."""
        return self.since is None

    def describe(self) -> str:
        return f"fhir-rest:{loggable(self.base_url)}"

    def new_state(self) -> dict[str, str]:
        """type -> server time at the start of its search, for each type read completely in this run."""
        return {t: self._started[t] for t in self.types if t in self._started and t not in self.incomplete}

    def records(self, types: set[str] | None = None, exclude: set[str] | None = None) -> Iterator[RawRecord]:
        for resource_type in self.types:
            if selected(resource_type, types, exclude):
                yield from self._search(resource_type)

    def close(self) -> None:
        if self.close_http:
            self.http.close()

    def __enter__(self) -> RestSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------
    def _lower_bound(self, resource_type: str) -> str | None:
        text = (self.since or {}).get(resource_type)
        if not text:
            return None
        try:
            return format_instant(parse_instant(text) - self.overlap)
        except (ValueError, OverflowError):
            raise ExtractError(f"the stored watermark for {resource_type} is not a date-time") from None

    def _search(self, resource_type: str) -> Iterator[RawRecord]:
        self._started.pop(resource_type, None)
        params: dict | None = {"_count": str(self.page_size)}
        bounds = (["ge" + self._bounds[resource_type]] if self._bounds[resource_type] else []) + (
            ["lt" + self.until] if self.until else [])
        if bounds:
            params["_lastUpdated"] = bounds if len(bounds) > 1 else bounds[0]
        url: str | None = f"{self.base_url}/{resource_type}"
        seen: set[tuple[str, str]] = set()
        visited: set[str] = set()
        started: datetime | None = None
        page = count = 0
        local_start = self.now()
        while url:
            page += 1
            where = f"{resource_type} search page {page}"
            visited.add(url)
            try:
                bundle, response = self._page(url, params, f"{resource_type} search" + (f" page {page}" if page > 1 else ""))
            except _Unreadable as bad:
                log.warning("%s: %s; %s is incomplete", where, bad.reason, resource_type)
                self.incomplete.add(resource_type)
                yield RawRecord(bad.text, where, f"!{bad.reason}")
                return
            if started is None:
                started = parse_http_date(response.headers.get("Date")) or local_start
            for index, entry in enumerate(bundle.get("entry") or []):
                record = self._entry(resource_type, entry, f"{where} entry {index}", seen)
                if record is not None:
                    count += record.expected_type == resource_type
                    yield record
            params = None
            url = self._next(bundle, str(response.url), visited)
            if isinstance(url, _Unreadable):
                log.warning("%s: %s; %s is incomplete", where, url.reason, resource_type)
                self.incomplete.add(resource_type)
                yield RawRecord(url.text, where, f"!{url.reason}")
                return
        self.counts[resource_type] = count
        # Read to the last page: the next pull starts where this one's window ended (or its search began).
        self._started[resource_type] = self.until or format_instant(started or local_start)
        log.info("%s: %d resources in %d pages", resource_type, count, page)

    def _page(self, url: str, params: dict | None, what: str):
        """(Bundle, response) of one search page; a page that is not JSON is fetched again a few times."""
        for attempt in range(self.invalid_page_retries + 1):
            response = self.http.get(url, params=params, what=what)
            raw = response.content
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as exc:
                reason = f"search page is not valid JSON: {exc.msg} at char {exc.pos}"
            except UnicodeDecodeError:
                reason = "search page is not valid UTF-8"
            else:
                if isinstance(body, dict) and body.get("resourceType") == "Bundle":
                    return body, response
                kind = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
                raise _Unreadable(f"search page is not a Bundle ({str(kind)[:64]})", raw.decode("utf-8", "replace"))
            if attempt < self.invalid_page_retries:
                self.http.wait_before_retry(attempt, "invalid_json", what, "page is not valid JSON")
        raise _Unreadable(reason, raw.decode("utf-8", "replace"))

    def _entry(self, resource_type: str, entry, location: str, seen: set) -> RawRecord | None:
        if not isinstance(entry, dict):
            return RawRecord(json.dumps(entry), location, "!Bundle entry is not an object")
        search = entry.get("search") if isinstance(entry.get("search"), dict) else {}
        resource = entry.get("resource")
        is_outcome = isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome"
        if search.get("mode") == "outcome" or (is_outcome and resource_type != "OperationOutcome"):
            text = outcome_text(_Json(resource)) if is_outcome else ""
            if text:
                self.warnings.append(text)
            return None
        if search.get("mode") == "include":   # never asked for (_include is not used)
            return None
        if not isinstance(resource, dict):
            return RawRecord(json.dumps(resource), location, "!Bundle entry without a resource")
        meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
        version = meta.get("versionId")
        self.warnings.extend(inline_attachments(resource, self.http, self.base_url))
        text = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
        if not version:  # no version: the same content twice is the same copy
            version = "sha1:" + hashlib.sha1(json.dumps(resource, sort_keys=True).encode()).hexdigest()
        key = (str(resource.get("resourceType")), str(resource.get("id")), str(version))
        if key in seen:
            self.duplicates += 1
            return None
        seen.add(key)
        return RawRecord(text, location, resource_type)

    def _next(self, bundle: dict, page_url: str, visited: set[str]):
        """The next page's URL as the server gave it (resolved if relative), None, or why not to follow."""
        links = bundle.get("link") if isinstance(bundle.get("link"), list) else []
        for link in links:
            if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
                target = urljoin(page_url, link["url"].strip())
                if not same_origin(target, self.base_url):
                    return _Unreadable(f"next link points to another server ({loggable(target)}); not followed",
                                       link["url"])
                if target in visited:
                    return _Unreadable("next link repeats an earlier page (paging loop)", link["url"])
                return target
        return None


class _Json:
    """Adapter so `outcome_text` can read a resource already parsed."""

    def __init__(self, body):
        self.body = body

    def json(self):
        return self.body
