"""Local FHIR files: Bulk Data NDJSON output (`Patient.ndjson`, `Patient.000.ndjson`, `.ndjson.gz`) and
FHIR Bundles / single resources as `.json`.

Records are yielded as raw text with their location (file:line) so that a bad line can be quarantined
with the reason instead of stopping the run. Files named for a resource type are opened only when that
type is asked for, so a pass over Patients and Conditions does not read the Observation files.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from etl.extract.errors import ExtractError

_TYPED_NAME = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)(?:[._-]\d+)*\.ndjson(?:\.gz)?$")


@dataclass(frozen=True)
class RawRecord:
    """One resource as read: its text, where it came from, and the type the file name promised."""

    text: str
    location: str
    expected_type: str | None = None


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


class FileSource:
    """A directory (or one file) of FHIR NDJSON / Bundle JSON: a full snapshot (what it lacks is removed from
    staging), or with `delta` only changes (new and updated resources, as a saved `_since` export holds:
    nothing is removed)."""

    def __init__(self, path: Path, delta: bool = False):
        self.path = Path(path)
        self.is_snapshot = not delta
        if not self.path.exists():
            raise FileNotFoundError(f"source not found: {self.path}")
        self.files = sorted(p for p in ([self.path] if self.path.is_file() else self.path.rglob("*"))
                            if p.is_file() and _is_fhir_file(p))
        if not self.files:
            raise FileNotFoundError(f"no FHIR .ndjson or .json files in {self.path}")

    def describe(self) -> str:
        return f"files:{self.path.name}"

    def records(self, types: set[str] | None = None, exclude: set[str] | None = None) -> Iterator[RawRecord]:
        """Yield raw records of the given resource types (None = all), skipping `exclude` types.

        A type-named NDJSON file is read only if its type is selected; other files are read and their
        resources filtered after parsing the resourceType.
        """
        for path in self.files:
            typed = _TYPED_NAME.match(path.name)
            file_type = typed.group("type") if typed else None
            if file_type:
                if not _selected(file_type, types, exclude):
                    continue
                yield from self._ndjson(path, file_type)
            elif ".ndjson" in path.name:
                yield from _filter(self._ndjson(path, None), types, exclude)
            else:
                yield from _filter(self._json(path), types, exclude)

    def _ndjson(self, path: Path, file_type: str | None) -> Iterator[RawRecord]:
        # Lines are decoded one by one so that one non-UTF-8 line is quarantined, not the whole file.
        number = 0
        try:
            with _open_binary(path) as handle:
                for number, raw in enumerate(handle, start=1):
                    if not raw.strip():
                        continue
                    try:
                        yield RawRecord(raw.decode("utf-8"), f"{path.name}:{number}", file_type)
                    except UnicodeDecodeError as exc:
                        yield RawRecord(raw.decode("utf-8", "replace"), f"{path.name}:{number}",
                                        f"!not UTF-8: {exc.reason}")
        except (OSError, EOFError, zlib.error) as exc:
            # A damaged file (a .gz cut short or not gzip at all): the source is a snapshot, so reading on
            # would delete every staged resource after the damage. Stop the run; nothing is staged.
            raise ExtractError(f"{path.name} cannot be read after line {number}: {type(exc).__name__}: {exc}") from exc

    def _json(self, path: Path) -> Iterator[RawRecord]:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, a 4300+ digit number
            reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
            yield RawRecord(path.read_bytes().decode("utf-8", "replace"), path.name, f"!not valid JSON: {reason}")
            return
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            for index, entry in enumerate(document.get("entry") or []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                yield RawRecord(json.dumps(resource), f"{path.name}#entry[{index}]")
        else:
            yield RawRecord(json.dumps(document), path.name)


def _is_fhir_file(path: Path) -> bool:
    name = path.name.lower()
    return (name.endswith((".ndjson", ".ndjson.gz", ".json")) and name != "truth.json"
            and not name.startswith("."))


def _selected(resource_type: str, types: set[str] | None, exclude: set[str] | None) -> bool:
    return (types is None or resource_type in types) and not (exclude and resource_type in exclude)


def _filter(records: Iterable[RawRecord], types, exclude) -> Iterator[RawRecord]:
    for record in records:
        if record.expected_type and record.expected_type.startswith("!"):
            # Unreadable input is reported once, in the pass that reads everything else.
            if types is None:
                yield record
            continue
        try:
            resource_type = json.loads(record.text).get("resourceType")
        except (ValueError, AttributeError, RecursionError):  # ValueError: also an integer of over 4300 digits
            resource_type = None
        if not isinstance(resource_type, str):
            # Missing or not a type name (a number, a list): parse_record quarantines it in the full pass.
            if types is None:
                yield record
        elif _selected(resource_type, types, exclude):
            yield record
