"""A scheduled pull: one data interval of a FHIR server, extracted type by type to files, staged at once.

Orchestrators extract each resource type in its own task (`extract_type`), so types run in parallel
and retry alone. A task writes the type's search results to `<work_dir>/<Type>.ndjson`, and pages it
could not read to `<Type>.unreadable.jsonl`. It returns counts and the path only, never resources.
`WindowSource` then reads those files as one source for staging:
- windowed: the interval's end becomes each complete type's watermark, and staging is incremental;
- full: a snapshot; what the server no longer returns is removed. A snapshot with an incomplete type
  is refused.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from etl.extract.errors import ExtractError
from etl.extract.files import RawRecord
from etl.extract.http import FhirHttp
from etl.extract.rest import RestSource, check_types, selected


def extract_type(base_url: str, resource_type: str, work_dir: str, *, since: str | None, until: str | None,
                 auth, verify: bool | str = True, page_size: int = 200, overlap_seconds: float = 300.0) -> dict:
    """Search one type (`since <= _lastUpdated < until`, both optional) into files; returns counts and paths."""
    (resource_type,) = check_types([resource_type])
    directory = Path(work_dir)
    directory.mkdir(parents=True, exist_ok=True)
    found, unreadable = directory / f"{resource_type}.ndjson", directory / f"{resource_type}.unreadable.jsonl"
    http = FhirHttp(base_url, auth, verify=verify)
    source = RestSource(base_url, http, (resource_type,), page_size=page_size, overlap_seconds=overlap_seconds,
                        since={resource_type: since} if since else None, until=until)
    bad = 0
    with source, _atomic(found) as resources, _atomic(unreadable) as pages:
        for record in source.records():
            if record.expected_type and record.expected_type.startswith("!"):
                bad += 1
                pages.write(json.dumps({"location": record.location, "reason": record.expected_type[1:],
                                        "text": record.text}) + "\n")
            else:
                resources.write(record.text.replace("\n", " ") + "\n")
    return {"resource_type": resource_type, "path": str(found), "resources": source.counts.get(resource_type, 0),
            "unreadable_pages": bad, "complete": resource_type not in source.incomplete,
            "watermark": source.new_state().get(resource_type), "duplicates": source.duplicates,
            "server_messages": source.warnings[:20], "source_key": source.describe()}


class _atomic:
    """A text file that appears under its name only once it is completely written."""

    def __init__(self, path: Path):
        self.path, self.partial = path, path.with_name(path.name + ".partial")

    def __enter__(self):
        self.handle = self.partial.open("w", encoding="utf-8")
        return self.handle

    def __exit__(self, kind, *exc) -> None:
        self.handle.close()
        if kind is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


class WindowSource:
    """The files `extract_type` wrote for one run, as a staging source (see the module docstring)."""

    def __init__(self, extracts: list[dict], *, snapshot: bool):
        if not extracts:
            raise ExtractError("no extracted resource types to stage")
        keys = {e["source_key"] for e in extracts}
        if len(keys) != 1:
            raise ExtractError(f"extracts come from several sources: {sorted(keys)}")
        self.extracts = sorted(extracts, key=lambda e: e["resource_type"])
        self.source_key = keys.pop()
        self.incomplete = {e["resource_type"] for e in extracts if not e["complete"]}
        if snapshot and self.incomplete:
            raise ExtractError(f"a full refresh needs every type read completely; incomplete: {sorted(self.incomplete)}")
        self.is_snapshot = snapshot
        self.deleted: list[tuple[str, str]] = []  # a search cannot see deletions

    def describe(self) -> str:
        return self.source_key

    def new_state(self) -> dict[str, str]:
        return {e["resource_type"]: e["watermark"] for e in self.extracts if e["complete"] and e["watermark"]}

    def records(self, types: set[str] | None = None, exclude: set[str] | None = None) -> Iterator[RawRecord]:
        for extract in self.extracts:
            resource_type = extract["resource_type"]
            if not selected(resource_type, types, exclude):
                continue
            path = Path(extract["path"])
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        yield RawRecord(line, f"{resource_type} window line {number}", resource_type)
            with path.with_name(f"{resource_type}.unreadable.jsonl").open(encoding="utf-8") as handle:
                for line in handle:
                    page = json.loads(line)
                    yield RawRecord(page["text"], page["location"], "!" + page["reason"])
