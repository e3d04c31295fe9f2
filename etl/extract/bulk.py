"""FHIR Bulk Data `$export` as a source (HL7 Bulk Data Access 2.0, asynchronous request pattern).

Kick-off `GET [base]/$export | Patient/$export | Group/[id]/$export?_type=...[&_since=...]` with
`Prefer: respond-async` -> 202 and a status URL (Content-Location); polling it -> 202 (X-Progress,
Retry-After) until 200 and the manifest. One export job serves every `records()` call of the source
(the first call starts it), so the cohort pass and the pass over everything else read the same
snapshot. Output files are streamed line by line (constant memory; a download cut short resumes after
its last complete line), with the access token only when the manifest says `requiresAccessToken`.

`deleted` files (Bundles of DELETE requests) fill `self.deleted` with (type, id); `error` files
(OperationOutcome NDJSON) fill `self.errors` with their diagnostics text, and an issue of severity
error or fatal puts "$export errors" in `self.incomplete` (some resources were not exported, so the
watermark must not move past them). A failure or interrupt while the job is being started or polled
cancels it (DELETE on the status URL); `close()` deletes a finished job's files on the server.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote, urljoin

from etl.extract.errors import ExtractError, ServerError
from etl.extract.files import RawRecord
from etl.extract.http import FHIR_JSON, FHIR_NDJSON, FhirHttp, loggable, retry_after_seconds
from etl.extract.rest import check_types, parse_instant, selected

log = logging.getLogger(__name__)

LEVELS = ("system", "patient", "group")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DELETED_URL = re.compile(r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")


class BulkSource:
    """Resources of `types` from one Bulk Data export job (see the module docstring).

    `poll_max_wait`: seconds of waiting between polls before giving up (the job is then cancelled);
    `poll_interval`/`poll_max_interval`: the exponential backoff when the server sends no Retry-After.
    """

    def __init__(self, base_url: str, http: FhirHttp, types: tuple[str, ...], *, level: str = "system",
                 group_id: str | None = None, since: str | None = None, poll_max_wait: float = 6 * 3600,
                 poll_interval: float = 2.0, poll_max_interval: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep, close_http: bool = True, cleanup: bool = True,
                 invalid_file_retries: int = 2):
        if level not in LEVELS:
            raise ExtractError(f"bulk export level must be one of {', '.join(LEVELS)}, not {level!r}")
        if level == "group" and not _FHIR_ID.match(group_id or ""):
            raise ExtractError("a group-level bulk export needs a FHIR Group id ([A-Za-z0-9-.], at most 64)")
        if since:
            try:
                parse_instant(since)
            except ValueError:
                raise ExtractError("the stored bulk export watermark (_since) is not a date-time") from None
        self.base_url = base_url.rstrip("/")
        self.http, self.types, self.level, self.group_id = http, check_types(types), level, group_id
        self.since = since or None
        self.poll_max_wait, self.poll_interval, self.poll_max_interval = poll_max_wait, poll_interval, poll_max_interval
        self.sleep, self.close_http, self.cleanup = sleep, close_http, cleanup
        self.invalid_file_retries = invalid_file_retries
        self.status_url: str | None = None
        self.manifest: dict | None = None
        self.progress: str | None = None
        self.deleted: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.incomplete: set[str] = set()
        self.cancelled = False
        self._finished = False

    @property
    def is_snapshot(self) -> bool:
        return self.since is None

    def describe(self) -> str:
        scope = self.level + (f"/{self.group_id}" if self.level == "group" else "")
        return f"fhir-bulk:{scope}:{loggable(self.base_url)}"

    def new_state(self) -> dict[str, str]:
        """{"_bulk": transactionTime of the manifest}: the next run's `_since`."""
        when = (self.manifest or {}).get("transactionTime")
        return {"_bulk": when} if isinstance(when, str) and when else {}

    def records(self, types: set[str] | None = None, exclude: set[str] | None = None) -> Iterator[RawRecord]:
        manifest = self._ensure_manifest()
        token = bool(manifest.get("requiresAccessToken"))
        for output in manifest.get("output") or []:
            if not isinstance(output, dict):
                continue
            resource_type, url = output.get("type"), output.get("url")
            if resource_type not in self.types or not selected(resource_type, types, exclude):
                continue
            if not isinstance(url, str) or not url:
                self.incomplete.add(resource_type)
                yield RawRecord(json.dumps(output), "manifest output", "!manifest output without a url")
                continue
            yield from self._file(url, resource_type, token)

    def cancel(self) -> None:
        """DELETE the status URL: cancels a running job, or lets the server drop a finished job's files."""
        if self.status_url is None or self.cancelled:
            return
        self.cancelled = True
        try:
            self.http.delete(self.status_url, headers={"Accept": "application/json"}, what="$export cancel")
            log.info("bulk export job %s", "files released" if self._finished else "cancelled")
        except ExtractError as exc:
            log.warning("could not cancel the bulk export job: %s", exc)

    def close(self) -> None:
        try:
            if self.cleanup or not self._finished:
                self.cancel()
        finally:
            if self.close_http:
                self.http.close()

    def __enter__(self) -> BulkSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the export job -------------------------------------------------------------------------------
    def kickoff_url(self) -> str:
        if self.level == "system":
            return f"{self.base_url}/$export"
        if self.level == "patient":
            return f"{self.base_url}/Patient/$export"
        return f"{self.base_url}/Group/{quote(self.group_id, safe='')}/$export"

    def _ensure_manifest(self) -> dict:
        if self.manifest is not None:
            return self.manifest
        if self.cancelled:
            raise ExtractError("the bulk export job was cancelled")
        try:
            self._kick_off()
            manifest = self._poll()
            self._finished = True
            self._read_side_files(manifest)
        except BaseException:
            self.cancel()
            raise
        self.manifest = manifest
        return manifest

    def _kick_off(self) -> None:
        params = {"_type": ",".join(self.types)}
        if self.since:
            params["_since"] = self.since
        response = self.http.get(self.kickoff_url(), params=params, what="$export kick-off",
                                 headers={"Accept": FHIR_JSON, "Prefer": "respond-async"})
        if response.status_code != 202:
            raise ServerError(f"FHIR server error {response.status_code} on $export kick-off: "
                              f"expected 202 Accepted", response.status_code)
        location = response.headers.get("Content-Location")
        if not location:
            raise ServerError("FHIR server error on $export kick-off: 202 without a Content-Location", 202)
        self.status_url = urljoin(str(response.url), location.strip())
        log.info("bulk export started (%s level, %d types); status %s", self.level, len(self.types),
                 loggable(self.status_url))

    def _poll(self) -> dict:
        waited, attempt, unreadable = 0.0, 0, 0
        while True:
            response = self.http.get(self.status_url, headers={"Accept": "application/json"}, what="$export status")
            if response.status_code == 200:
                try:
                    manifest = response.json()
                except ValueError:
                    manifest = None
                if isinstance(manifest, dict) and isinstance(manifest.get("output", []), list):
                    log.info("bulk export complete: %d output files, transactionTime %s",
                             len(manifest.get("output") or []), manifest.get("transactionTime"))
                    return manifest
                if unreadable >= 2:
                    raise ServerError("FHIR server error on $export status: the manifest is not a JSON object "
                                      "with an output list", 200)
                unreadable += 1
                delay = self.http.backoff_delay(unreadable)
            elif response.status_code == 202:
                progress = " ".join((response.headers.get("X-Progress") or "").split())[:100]
                if progress:
                    self.progress = progress
                    log.info("bulk export in progress: %s", progress)
                delay = retry_after_seconds(response, self.http.clock)
                if delay is None:
                    delay = min(self.poll_max_interval, self.poll_interval * 2 ** min(attempt, 32))
                attempt += 1
            else:
                raise ServerError(f"FHIR server error {response.status_code} on $export status: "
                                  f"expected 202 or 200", response.status_code)
            if waited + delay > self.poll_max_wait:
                raise ExtractError(f"bulk export not complete after waiting {waited:.0f} s "
                                   f"(limit {self.poll_max_wait:.0f} s)")
            self.sleep(delay)
            waited += delay

    # -- files ------------------------------------------------------------------------------------------
    def _lines(self, url: str, what: str, token: bool) -> Iterator[tuple[int, bytes]]:
        """The lines of one file; a download whose first line is not JSON (a proxy's error page sent
        with 200) is fetched again a few times before its lines are passed on (and quarantined)."""
        for attempt in range(self.invalid_file_retries + 1):
            lines = self.http.iter_lines(url, headers={"Accept": FHIR_NDJSON}, authenticate=token, what=what)
            try:
                first = next(lines, None)
                if first is not None and attempt < self.invalid_file_retries and not _is_json(first[1]):
                    lines.close()
                    self.http.wait_before_retry(attempt, "invalid_json", what, "download does not start with JSON")
                    continue
                if first is not None:
                    yield first
                yield from lines
                return
            finally:
                lines.close()

    def _file(self, url: str, resource_type: str, token: bool) -> Iterator[RawRecord]:
        where = loggable(url)   # no query string: pre-signed URLs carry credentials there
        count = 0
        for number, raw in self._lines(url, f"$export file ({resource_type})", token):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            location = f"{where}:{number}"
            try:
                yield RawRecord(raw.decode("utf-8"), location, resource_type)
            except UnicodeDecodeError as exc:
                yield RawRecord(raw.decode("utf-8", "replace"), location, f"!not UTF-8: {exc.reason}")
            count += 1
        log.info("bulk export file %s: %d lines", where, count)

    def _read_side_files(self, manifest: dict) -> None:
        token = bool(manifest.get("requiresAccessToken"))
        deleted, errors = [], []
        for item in manifest.get("deleted") or []:
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str):
                self.incomplete.add("$export deleted")
                continue
            for number, raw in self._lines(url, "$export deleted file", token):
                found = _deleted_entries(raw)
                if found is None:
                    log.warning("bulk export deleted file %s line %d is unreadable", loggable(url), number)
                    self.incomplete.add("$export deleted")
                    continue
                deleted.extend((t, i) for t, i in found if t in self.types)
        serious = 0
        for item in manifest.get("error") or []:
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str):
                continue
            for number, raw in self._lines(url, "$export error file", token):
                issues = _outcome_issues(raw)
                if issues is None:
                    errors.append(f"error file line {number} is not an OperationOutcome")
                    serious += 1
                    continue
                for severity, text in issues:
                    errors.append(text)
                    serious += severity in ("error", "fatal")
        if serious:
            self.incomplete.add("$export errors")
        if errors:
            (log.warning if serious else log.info)("bulk export reported %d issues (%d errors)", len(errors), serious)
        self.deleted, self.errors = deleted, errors


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _resource_of_type(raw: bytes, resource_type: str) -> dict | None:
    """One NDJSON line as a resource of `resource_type`, None if it is unreadable or of another type."""
    try:
        resource = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return resource if isinstance(resource, dict) and resource.get("resourceType") == resource_type else None


def _deleted_entries(raw: bytes) -> list[tuple[str, str]] | None:
    """(type, id) of the DELETE entries of one deleted-file line (a Bundle), None if unreadable."""
    bundle = _resource_of_type(raw, "Bundle")
    if bundle is None:
        return None
    found = []
    for entry in bundle.get("entry") or []:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or str(request.get("method", "")).upper() != "DELETE":
            continue
        match = _DELETED_URL.search(str(request.get("url") or "").split("?")[0])
        if match:
            found.append((match.group("type"), match.group("id")))
    return found


def _outcome_issues(raw: bytes) -> list[tuple[str, str]] | None:
    """(severity, diagnostics text) of an OperationOutcome line, None if it is not one."""
    outcome = _resource_of_type(raw, "OperationOutcome")
    if outcome is None:
        return None
    issues = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
        text = issue.get("diagnostics") or details.get("text") or issue.get("code") or "unspecified issue"
        issues.append((str(issue.get("severity") or "error"), " ".join(str(text).split())[:300]))
    return issues
