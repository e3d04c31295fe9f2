"""Sites: which FHIR servers feed which registry, on what schedule (one YAML file, no code changes).

Read when Airflow parses the DAG files, so this module imports only the standard library and PyYAML.

Each site gets its own set of DAGs. Endpoints and secrets stay in Airflow Connections: the site names
its FHIR connection (default `fhir_<site>`) and its registry connection (default `dlm_registry`). FHIR
ids are unique only within one server, so two sites may not share a registry connection.

    sites:
      - id: hospital_a
        schedule: "@daily"            # cron or @preset; each run reads its data interval
        start_date: "2026-01-01"
        resource_types: [Patient, Condition, ...]  # default (empty): every type the registry maps
        fhir_conn_id: fhir_hospital_a
        registry_conn_id: dlm_registry
        pool: fhir_hospital_a           # bounds concurrent requests to the endpoint
        pool_slots: 4
        page_size: 200
        overlap_seconds: 300            # re-read this much before each interval (late commits)
        out_dir: /opt/dlmreg/out/hospital_a
        map_partitions: 1               # > 1: map patient-key ranges as parallel tasks (PostgreSQL only)
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SITES_FILE = Path(__file__).resolve().parents[1] / "config" / "sites.yaml"
_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_FIELDS = {"id", "schedule", "start_date", "resource_types", "fhir_conn_id", "registry_conn_id", "pool",
           "pool_slots", "page_size", "overlap_seconds", "out_dir", "followup_window_months",
           "map_partitions"}
MAX_PARTITIONS = 64


class SiteConfigError(ValueError):
    """The sites file is missing, unreadable or inconsistent (the message says where)."""


@dataclass(frozen=True)
class Site:
    id: str
    start_date: dt.date
    schedule: str = "@daily"
    resource_types: tuple[str, ...] = ()
    fhir_conn_id: str = ""
    registry_conn_id: str = "dlm_registry"
    pool: str = ""
    pool_slots: int = 4
    page_size: int = 200
    overlap_seconds: float = 300.0
    out_dir: str = ""
    followup_window_months: float = 24.0
    map_partitions: int = 1


def sites_file() -> Path:
    return Path(os.environ.get("DLMREG_SITES_FILE") or DEFAULT_SITES_FILE)


def load_sites(path: Path | None = None) -> list[Site]:
    """Read and validate the sites file; raises SiteConfigError naming the problem."""
    import yaml

    path = Path(path or sites_file())
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise SiteConfigError(f"sites file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SiteConfigError(f"sites file {path} is not valid YAML: {exc}") from None
    entries = document.get("sites") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SiteConfigError(f"sites file {path} needs a non-empty `sites:` list")
    sites = [_site(entry, index, path) for index, entry in enumerate(entries)]
    for attribute in ("id", "registry_conn_id"):
        seen: dict[str, str] = {}
        for site in sites:
            value = getattr(site, attribute)
            if value in seen:
                reason = ("FHIR ids are unique per server only: give each site its own registry"
                          if attribute == "registry_conn_id" else "site ids must be unique")
                raise SiteConfigError(f"sites {seen[value]} and {site.id} share {attribute} {value!r}: {reason}")
            seen[value] = site.id
    return sites


def _site(entry, index: int, path: Path) -> Site:
    where = f"sites file {path}, site {index + 1}"
    if not isinstance(entry, dict):
        raise SiteConfigError(f"{where}: expected a mapping")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise SiteConfigError(f"{where}: unknown keys {sorted(unknown)}")
    site_id = str(entry.get("id", ""))
    if not _ID.match(site_id):
        raise SiteConfigError(f"{where}: id must be lower-case letters, digits and _ (got {site_id!r})")
    try:
        start = dt.date.fromisoformat(str(entry.get("start_date", "")))
    except ValueError:
        raise SiteConfigError(f"{where} ({site_id}): start_date must be an ISO date") from None
    types = tuple(entry.get("resource_types") or ())
    malformed = [t for t in types if not isinstance(t, str) or not _TYPE.match(t)]
    if malformed:
        raise SiteConfigError(f"{where} ({site_id}): not FHIR resource type names: {malformed}")
    try:
        return Site(
            id=site_id, start_date=start, schedule=str(entry.get("schedule", "@daily")), resource_types=types,
            fhir_conn_id=str(entry.get("fhir_conn_id") or f"fhir_{site_id}"),
            registry_conn_id=str(entry.get("registry_conn_id") or "dlm_registry"),
            pool=str(entry.get("pool") or f"fhir_{site_id}"), pool_slots=int(entry.get("pool_slots", 4)),
            page_size=int(entry.get("page_size", 200)), overlap_seconds=float(entry.get("overlap_seconds", 300)),
            out_dir=str(entry.get("out_dir") or os.path.join(os.environ.get("DLMREG_OUT_DIR", "/tmp/dlmreg-out"),
                                                             site_id)),
            followup_window_months=float(entry.get("followup_window_months", 24)),
            map_partitions=_partitions(entry.get("map_partitions", 1)))
    except (TypeError, ValueError) as exc:
        raise SiteConfigError(f"{where} ({site_id}): {exc}") from None


def _partitions(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTITIONS:
        raise ValueError(f"map_partitions must be a whole number from 1 to {MAX_PARTITIONS} (got {value!r})")
    return value


def pools(sites: list[Site]) -> dict:
    """The Airflow pools the sites need, in `airflow pools import` format."""
    return {site.pool: {"slots": site.pool_slots, "description": f"concurrent requests to {site.fhir_conn_id}",
                        "include_deferred": False} for site in sites}
