"""Issue #9: mapping runs in bounded batches of patients, re-maps only patients whose staged data changed,
and partitions of the patients load concurrently into one PostgreSQL with the registry a sequential
load gives (etl.pipeline.load_patients / map_partition, etl.transform.patients)."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import threading

import pytest
import sqlalchemy as sa

import etl.pipeline
from etl.pipeline import audit_partitions, load_patients, map_partition, stage
from etl.registry import open_registry
from etl.transform.patients import KeyRange
from etl.vocabulary import load_code_map
from tests.registry_compare import assert_same_registry, canonical_registry

TODAY = dt.date(2026, 1, 15)


def _stage(url: str, source) -> None:
    registry = open_registry(url)
    stage(registry, str(source), load_code_map(), "run", show_progress=False)
    registry.engine.dispose()


def _load(url: str, source, **options) -> dict:
    """Stage `source` and map/load/derive it (no checks: the tests compare registries)."""
    _stage(url, source)
    registry = open_registry(url)
    with registry.engine.begin() as conn:
        done = load_patients(conn, registry.tables, load_code_map(), "run", 24.0, TODAY, **options)
    registry.engine.dispose()
    return done


def _write_global_rows(url: str) -> None:
    """The vocabulary and provenance tables the audit writes (load_patients writes patients only)."""
    from etl.load import replace_global_rows
    from etl.pipeline import _global_rows

    registry = open_registry(url)
    with registry.engine.begin() as conn:
        replace_global_rows(conn, registry.tables, _global_rows(load_code_map(), "test", TODAY)[0])
    registry.engine.dispose()


def _lineage_ids(url: str) -> dict[tuple[str, str], int]:
    registry = open_registry(url)
    lineage = registry.tables["dlm_lineage"]
    with registry.engine.connect() as conn:
        ids = {(t, k): i for t, k, i in conn.execute(sa.select(lineage.c.omop_table, lineage.c.source_key,
                                                               lineage.c.omop_id))}
    registry.engine.dispose()
    return ids


def _staged_patients(source) -> list[str]:
    """Patients of the cohort (a liver-metastasis Condition), in file order."""
    cohort = {json.loads(line)["subject"]["reference"].split("/")[-1]
              for line in (source / "Condition.ndjson").read_text().splitlines() if '"94381002"' in line}
    return [p for p in (json.loads(line)["id"] for line in (source / "Patient.ndjson").read_text().splitlines())
            if p in cohort]


def _without_patient(source, target, patient: str) -> None:
    """Copy a cohort without one patient and everything that refers to it."""
    target.mkdir()
    for path in source.glob("*.ndjson"):
        kept = [line for line in path.read_text().splitlines()
                if f'"Patient/{patient}"' not in line and f'"id":"{patient}"' not in line]
        (target / path.name).write_text("".join(line + "\n" for line in kept))


def test_batch_size_does_not_change_the_registry(cohort_factory, tmp_path, monkeypatch):
    """Batches of 1, 7 and all patients give the same registry; no batch holds more patients than asked."""
    source = cohort_factory(20, 5)
    sizes = []
    original = etl.pipeline.map_batch

    def recording(conn, tables, codes, ids, keys, *args, **kwargs):
        sizes.append(len(keys))
        return original(conn, tables, codes, ids, keys, *args, **kwargs)

    monkeypatch.setattr(etl.pipeline, "map_batch", recording)
    urls = {}
    for size in (1, 7, 500):
        urls[size] = f"sqlite:///{tmp_path / f'batch{size}.sqlite'}"
        done = _load(urls[size], source, batch_size=size)
        assert done["mode"] == "full" and done["mapped"] == done["patients"] > 15
        assert max(sizes) <= size
        sizes.clear()
    assert_same_registry(urls[1], urls[7])
    assert_same_registry(urls[1], urls[500])


def test_only_changed_patients_are_mapped(cohort_factory, tmp_path):
    """A second load of the same data maps nobody; one changed resource re-maps its patient only; a patient
    gone from the source loses its rows; the result equals a fresh load and a full re-map keeps every id."""
    original = cohort_factory(20, 6)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    first = _load(url, original, batch_size=6)
    staged = first["patients"]
    assert first["mapped"] == staged > 15
    again = _load(url, original, batch_size=6)
    assert (again["mode"], again["mapped"], again["removed"]) == ("incremental", 0, 0)

    changed = tmp_path / "changed"
    gone, touched = _staged_patients(original)[:2]
    _without_patient(original, changed, gone)
    lines = (changed / "Condition.ndjson").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if f"Patient/{touched}" in line)
    condition = json.loads(lines[index])
    condition["onsetDateTime"] = "2015-02-03"
    lines[index] = json.dumps(condition)
    (changed / "Condition.ndjson").write_text("\n".join(lines) + "\n")
    done = _load(url, changed, batch_size=6)
    assert (done["mode"], done["mapped"], done["removed"], done["patients"]) == ("incremental", 1, 1, staged - 1)

    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    _load(fresh, changed)
    assert_same_registry(url, fresh)
    before = _lineage_ids(url)
    assert _load(url, changed, remap_all=True)["mapped"] == staged - 1
    assert_same_registry(url, fresh)
    assert _lineage_ids(url) == before


def test_mapping_settings_change_remaps_everyone(cohort_factory, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    source = cohort_factory(10, 8)
    _load(url, source)
    registry = open_registry(url)
    with registry.engine.begin() as conn:
        done = load_patients(conn, registry.tables, load_code_map(), "run", 12.0, TODAY)
        windows = {w for (w,) in conn.execute(sa.select(registry.tables["dlm_lesion_outcome"].c.followup_window_months))}
    assert done["mode"] == "incremental" and done["mapped"] == done["patients"] > 5 and windows == {12.0}


def test_resource_moved_to_another_patient_keeps_its_id(cohort_factory, tmp_path):
    original = cohort_factory(10, 3)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    _load(url, original)
    before = _lineage_ids(url)
    moved = tmp_path / "moved"
    shutil.copytree(original, moved)
    first, second = _staged_patients(original)[:2]
    lines = (moved / "Condition.ndjson").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if f"Patient/{first}" in line)
    condition = json.loads(lines[index])
    condition["subject"] = {"reference": f"Patient/{second}"}
    lines[index] = json.dumps(condition)
    (moved / "Condition.ndjson").write_text("\n".join(lines) + "\n")
    # batches of one: the new owner may be mapped before or after the old one
    assert _load(url, moved, batch_size=1)["mapped"] == 2
    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    _load(fresh, moved)
    assert_same_registry(url, fresh)
    key = ("condition_occurrence", f"Condition/{condition['id']}")
    assert _lineage_ids(url)[key] == before[key]


def test_registry_from_before_patient_digests_keeps_its_ids(cohort_factory, tmp_path):
    """An upgraded registry: lineage without patients and no digests. The next load fills the lineage's
    patients from staging, re-maps everyone and keeps every id."""
    source = cohort_factory(10, 4)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    _load(url, source)
    before, rows = _lineage_ids(url), canonical_registry(url)
    registry = open_registry(url)
    with registry.engine.begin() as conn:
        conn.execute(registry.tables["dlm_lineage"].update().values(patient_key=None))
        conn.execute(registry.tables["dlm_patient_digest"].delete())
    done = _load(url, source)
    assert done["mode"] == "full" and done["mapped"] == done["patients"] > 5
    assert _lineage_ids(url) == before
    assert canonical_registry(url) == rows
    with registry.engine.connect() as conn:
        lineage = registry.tables["dlm_lineage"]
        assert conn.execute(sa.select(sa.func.count()).where(lineage.c.patient_key.is_(None))).scalar() == 0


def test_partitions_cover_every_key_once():
    ranges = [KeyRange.partition(k, 3) for k in range(3)]
    for key in ("0" * 32, "55555555" + "0" * 24, "aaaaaaab", "ffffffff" + "f" * 24, "", "zz"):
        assert sum(key in r for r in ranges) == 1
    with pytest.raises(ValueError):
        KeyRange.partition(3, 3)


def test_partitions_loaded_concurrently_equal_a_sequential_load(cohort_factory, tmp_path, pg_url):
    """Two partitions, each in its own transaction, both open at once (each waits for the other after
    writing its first batch), give the registry of one sequential load; so does a second, incremental
    partitioned run after a change."""
    from tests.conftest import _fresh_pg_database

    source = cohort_factory(24, 11)
    staged = len(_staged_patients(source))
    sequential = _fresh_pg_database()
    _load(sequential, source, batch_size=5)
    _stage(pg_url, source)
    barrier = threading.Barrier(2, timeout=120)
    original_derive = etl.pipeline.derive
    waited = set()

    def derive_then_wait(conn, tables, window, rows=None):
        counts = original_derive(conn, tables, window, rows)
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()  # both partitions have written a batch and neither has committed
        return counts

    etl.pipeline.derive = derive_then_wait
    try:
        results, errors = {}, []

        def partition(part: int) -> None:
            registry = open_registry(pg_url)
            try:
                results[part] = map_partition(registry, load_code_map(), "run", part, 2, 24.0, TODAY, batch_size=5)
            except BaseException as exc:  # reported below
                errors.append(exc)
                barrier.abort()
            finally:
                registry.engine.dispose()

        threads = [threading.Thread(target=partition, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        etl.pipeline.derive = original_derive
    assert not errors, errors
    assert len(waited) == 2
    assert results[0]["mapped"] + results[1]["mapped"] == staged and min(results[0]["mapped"], results[1]["mapped"]) > 0
    registry = open_registry(pg_url)
    audited = audit_partitions(registry, load_code_map(), "run", "test", TODAY)
    assert audited["rows"]["person"] == staged and audited["quality"]["publishable"]
    _write_global_rows(sequential)
    assert_same_registry(pg_url, sequential)

    changed = tmp_path / "changed"
    _without_patient(source, changed, _staged_patients(source)[0])
    _stage(pg_url, changed)
    parts = [map_partition(registry, load_code_map(), "run2", k, 2, 24.0, TODAY) for k in range(2)]
    assert sum(p["removed"] for p in parts) == 1 and sum(p["mapped"] for p in parts) == 0
    _load(sequential, changed)
    assert_same_registry(pg_url, sequential)


def test_staged_digest_is_rule_pd1_hand_computed(registry_url):
    """Rule PD1: a patient's digest is sha256 of `salt:count:sum` (the sum of its resources' hashes as
    256-bit integers, modulo 2**256, in 64 hex digits), whatever order the rows come in; a patient-less
    resource has none, and a key range limits the patients."""
    import hashlib

    from etl.transform.patients import staged_digests

    registry = open_registry(registry_url)
    staging = registry.tables["fhir_resource"]
    high = "f" * 64  # two of these overflow 2**256
    rows = [("Observation", "o1", "aa", high), ("Observation", "o2", "aa", high), ("Patient", "p1", "aa", "0" * 63 + "5"),
            ("Patient", "p2", "bb", "1" * 64), ("Organization", "x", None, "2" * 64)]
    with registry.engine.begin() as conn:
        conn.execute(staging.delete())
        conn.execute(staging.insert(), [{"resource_type": t, "resource_id": i, "patient_key": k, "sha256": h,
                                         "resource_json": "{}"} for t, i, k, h in rows])
        digests = staged_digests(conn, registry.tables, "salt")
        only_b = staged_digests(conn, registry.tables, "salt", KeyRange("b", None))
        conn.execute(staging.delete())
    expected_total = (2 * (2**256 - 1) + 5) % 2**256
    assert digests == {
        "aa": hashlib.sha256(f"salt:3:{expected_total:064x}".encode()).hexdigest(),
        "bb": hashlib.sha256(f"salt:1:{'1' * 64}".encode()).hexdigest()}
    assert only_b == {"bb": digests["bb"]}
