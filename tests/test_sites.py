"""Scheduled pulls without Airflow: the sites file, connection fields, and one data interval extracted
type by type from the FHIR test server and staged with its own watermark (issue #6)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from etl.connections import fhir_endpoint, registry_url
from etl.extract.auth import BasicAuth
from etl.extract.errors import ExtractError
from etl.extract.window import WindowSource, extract_type
from etl.sites import SiteConfigError, load_sites, pools
from tests.fhir_server import FhirTestServer


def _write(tmp_path, text: str):
    path = tmp_path / "sites.yaml"
    path.write_text(text)
    return path


def test_sites_file_defaults_and_pools(tmp_path):
    sites = load_sites(_write(tmp_path, """
sites:
  - {id: site_a, start_date: "2026-01-01", registry_conn_id: reg_a}
  - {id: site_b, start_date: "2026-02-01", schedule: "0 3 * * *", registry_conn_id: reg_b,
     resource_types: [Patient, Condition], pool_slots: 2, map_partitions: 4}
"""))
    a, b = sites
    assert (a.map_partitions, b.map_partitions) == (1, 4)
    assert (a.fhir_conn_id, a.pool, a.schedule, a.resource_types) == ("fhir_site_a", "fhir_site_a", "@daily", ())
    assert (b.schedule, b.resource_types, b.pool_slots) == ("0 3 * * *", ("Patient", "Condition"), 2)
    assert pools(sites)["fhir_site_b"]["slots"] == 2


@pytest.mark.parametrize("text, message", [
    ("sites: []", "non-empty"),
    ("sites:\n  - {id: A, start_date: '2026-01-01'}", "lower-case"),
    ("sites:\n  - {id: a, start_date: 'soon'}", "ISO date"),
    ("sites:\n  - {id: a, start_date: '2026-01-01', colour: red}", "unknown keys"),
    ("sites:\n  - {id: a, start_date: '2026-01-01', resource_types: [patient]}", "not FHIR resource type"),
    ("sites:\n  - {id: a, start_date: '2026-01-01'}\n  - {id: b, start_date: '2026-01-01'}", "own registry"),
    ("sites: [", "not valid YAML"),
    ("sites:\n  - {id: a, start_date: '2026-01-01', map_partitions: 0}", "map_partitions must be"),
    ("sites:\n  - {id: a, start_date: '2026-01-01', map_partitions: 2.5}", "map_partitions must be"),
    ("sites:\n  - {id: a, start_date: '2026-01-01', map_partitions: 65}", "from 1 to 64"),
])
def test_bad_sites_files_are_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(SiteConfigError, match=message):
        load_sites(_write(tmp_path, text))


def test_connections_give_endpoint_auth_and_registry_url():
    base, auth, verify = fhir_endpoint("fhir_a", "https://fhir.example.org/r4", "u", "p", {"auth": "basic"})
    assert base == "https://fhir.example.org/r4" and isinstance(auth, BasicAuth) and verify is True
    assert fhir_endpoint("f", None, None, None, {"base_url": "https://x/fhir", "ca_bundle": "/ca.pem"})[2] == "/ca.pem"
    with pytest.raises(ExtractError, match="connection fhir_a"):
        fhir_endpoint("fhir_a", "fhir.example.org", None, None, {})
    with pytest.raises(ExtractError, match="smart"):
        fhir_endpoint("fhir_a", "https://x", "client", None, {"auth": "smart"})
    url = registry_url("reg", "postgres", "db.local", "etl", "s3cret", 5432, "registry", {})
    assert url == "postgresql+psycopg://etl:s3cret@db.local:5432/registry"
    assert registry_url("reg", "sqlite", "/data/r.sqlite", None, None, None, None, {}) == "sqlite:////data/r.sqlite"


def _clock(start: datetime):
    ticks = iter(range(10**6))
    return lambda: start + timedelta(seconds=next(ticks))


def test_an_interval_reads_only_its_changes_and_sets_its_watermark(tmp_path):
    day1, day2, day3 = (datetime(2026, 3, d, tzinfo=timezone.utc) for d in (1, 2, 3))
    with FhirTestServer(page_size=3) as server:
        server.clock = _clock(day1 + timedelta(hours=9))
        for i in range(7):
            server.upsert({"resourceType": "Patient", "id": f"p{i}", "birthDate": "1960-01-01"})
        server.clock = _clock(day2 + timedelta(hours=9))
        server.upsert({"resourceType": "Patient", "id": "p1", "birthDate": "1961-01-01"})
        server.upsert({"resourceType": "Patient", "id": "p9", "birthDate": "1970-01-01"})
        first = extract_type(server.url, "Patient", str(tmp_path / "w1"), since=day1.isoformat(),
                             until=day2.isoformat(), auth=None, overlap_seconds=0)
        second = extract_type(server.url, "Patient", str(tmp_path / "w2"), since=day2.isoformat(),
                              until=day3.isoformat(), auth=None, overlap_seconds=0)
        searches = [r for r in server.request_log if r["path"].endswith("/Patient")]
    assert first["resources"] == 6 and second["resources"] == 2  # p1's new version moved to day 2
    ids = {json.loads(line)["id"] for line in open(second["path"])}
    assert ids == {"p1", "p9"}
    assert second["watermark"] == "2026-03-03T00:00:00Z" and second["complete"]
    assert all(sorted(r["query"]["_lastUpdated"]) in (["ge2026-03-01T00:00:00Z", "lt2026-03-02T00:00:00Z"],
                                                       ["ge2026-03-02T00:00:00Z", "lt2026-03-03T00:00:00Z"])
               for r in searches)
    source = WindowSource([first], snapshot=False)
    assert source.new_state() == {"Patient": "2026-03-02T00:00:00Z"} and not source.is_snapshot
    assert len(list(source.records())) == 6


def test_a_full_refresh_with_an_incomplete_type_is_refused():
    incomplete = {"resource_type": "Patient", "path": "x", "resources": 0, "unreadable_pages": 1,
                  "complete": False, "watermark": None, "duplicates": 0, "source_key": "fhir-rest:x"}
    with pytest.raises(ExtractError, match="incomplete"):
        WindowSource([incomplete], snapshot=True)
    assert WindowSource([incomplete], snapshot=False).incomplete == {"Patient"}
