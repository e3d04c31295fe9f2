"""The code map: FHIR (system, code) -> registry meaning and OMOP concept, built once from `mappings/`.

Mappings are data. The project's CSVs live in `mappings/`; a site adds its own CSV files (same columns)
in a directory named by `--mappings` or `DLMREG_MAPPINGS`, and site rows win over the defaults. Codes
with no row map to concept_id 0 and are counted for the unmapped-codes report.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import mappings

CODE_COLUMNS = ("source_system", "source_code", "source_display", "registry_meaning", "domain_id",
                "target_concept_id", "target_vocabulary_id", "provenance")
CONVENTION_COLUMNS = ("meaning", "concept_id", "concept_name", "domain_id", "vocabulary_id", "provenance")


@dataclass(frozen=True)
class Mapping:
    system: str
    code: str
    display: str
    meaning: str
    domain: str
    concept_id: int
    vocabulary: str


UNMAPPED_DOMAIN = "Observation"
NO_ROW = "no mapping row"
ZERO_CONCEPT = "mapped to concept_id 0 (no verified concept)"


class CodeMap:
    """Lookup of codings; counts every coding it could not map, per FHIR field."""

    def __init__(self, rows: Iterable[Mapping], conventions: dict[str, int]):
        self._by_code = {(m.system, m.code): m for m in rows}
        self.conventions = conventions
        self.unmapped: Counter[tuple[str, str, str, str]] = Counter()  # (system, code, field, reason)

    @property
    def mappings(self) -> list[Mapping]:
        return list(self._by_code.values())

    def lookup(self, concept: dict | None, field: str) -> tuple[Mapping | None, str]:
        """Map a CodeableConcept: the first coding with a mapping row wins.

        Returns the mapping (None if no coding is mapped) and the source value to keep
        (`code` of the first coding, else the text). Unmapped codings are counted under `field`.
        """
        codings = [c for c in (concept or {}).get("coding") or [] if isinstance(c, dict)]
        for coding in codings:
            found = self._by_code.get((coding.get("system") or "", coding.get("code") or ""))
            if found:
                self.note_concept(found, field)
                return found, found.code
        for coding in codings:
            self.unmapped[(coding.get("system") or "", coding.get("code") or "", field, NO_ROW)] += 1
        if not codings:
            text = ((concept or {}).get("text") or "").strip()
            self.unmapped[("", text[:255], field, NO_ROW)] += 1
            return None, text
        return None, codings[0].get("code") or ""

    def note_concept(self, found: Mapping, field: str) -> None:
        """Report a code whose mapping row has concept 0 (no verified concept): stored as 0, listed."""
        if found.concept_id == 0:
            self.unmapped[(found.system, found.code, field, ZERO_CONCEPT)] += 1

    def meaning(self, concept: dict | None) -> str | None:
        """The registry meaning of a CodeableConcept, without counting it as unmapped."""
        for coding in (concept or {}).get("coding") or []:
            if isinstance(coding, dict):
                found = self._by_code.get((coding.get("system") or "", coding.get("code") or ""))
                if found:
                    return found.meaning
        return None

    def system_code(self, system: str, code: str) -> Mapping | None:
        return self._by_code.get((system, code))

    def convention(self, meaning: str) -> int:
        """A fixed OMOP concept (type concepts, episode concepts) from mappings/omop_conventions.csv."""
        return self.conventions[meaning]


def read_mapping_csv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = set(columns) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        if not (row.get("provenance") or "").strip():
            raise ValueError(f"{path}:{number}: every mapping row needs a provenance")
    return rows


def _site_dirs(extra: Iterable[Path] | None) -> list[Path]:
    dirs = [Path(p) for p in (extra or [])]
    env = os.environ.get("DLMREG_MAPPINGS")
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    return dirs


def load_code_map(extra_dirs: Iterable[Path] | None = None) -> CodeMap:
    """Build the code map from the project's CSVs plus any site mapping directories."""
    code_files = [mappings.DIRECTORY / "fhir_codes.csv"]
    for directory in _site_dirs(extra_dirs):
        if not directory.is_dir():
            raise FileNotFoundError(f"mapping directory not found: {directory}")
        code_files.extend(sorted(p for p in directory.glob("*.csv")))
    rows = []
    for path in code_files:
        for row in read_mapping_csv(path, CODE_COLUMNS):
            concept_id = int(row["target_concept_id"] or 0)
            rows.append(Mapping(row["source_system"].strip(), row["source_code"].strip(), row["source_display"],
                                row["registry_meaning"].strip(), row["domain_id"].strip(), concept_id,
                                row["target_vocabulary_id"].strip()))
    conventions = {row["meaning"]: int(row["concept_id"])
                   for row in read_mapping_csv(mappings.DIRECTORY / "omop_conventions.csv", CONVENTION_COLUMNS)}
    return CodeMap(rows, conventions)
