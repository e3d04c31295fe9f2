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


def test_bulk_load_refreshes_planner_statistics(cohort_factory, pg_url, tmp_path, monkeypatch):
    """A first (full) load analyzes staging and the lineage before mapping, the lineage again each time it has
    doubled, and (in the audit) every table; the statistics exist once it commits, before autovacuum (off
    here) could have made them. An incremental load of a few patients analyzes nothing."""
    source = cohort_factory(24, 11)
    registry = open_registry(pg_url)
    with registry.engine.begin() as conn:
        for name in ("fhir_resource", "dlm_lineage", "observation"):
            conn.exec_driver_sql(f"ALTER TABLE {conn.dialect.identifier_preparer.format_table(registry.tables[name])}"
                                 " SET (autovacuum_enabled = false)")
    registry.engine.dispose()
    analyzed: list[list[str]] = []
    real_analyze = etl.pipeline.analyze

    def recording(conn, tables):
        analyzed.append(sorted(t.name for t in tables))
        real_analyze(conn, tables)

    monkeypatch.setattr(etl.pipeline, "analyze", recording)
    monkeypatch.setattr(etl.pipeline, "LINEAGE_ANALYZE_ROWS", 100)
    done = _load(pg_url, source, batch_size=4)
    assert done["mode"] == "full" and done["statistics_refreshed"]
    assert analyzed[0] == ["dlm_lineage", "fhir_resource"]
    assert len(analyzed) >= 3 and all(names == ["dlm_lineage"] for names in analyzed[1:])
    registry = open_registry(pg_url)
    with registry.engine.connect() as conn:
        lineage_rows = conn.execute(sa.select(sa.func.count()).select_from(registry.tables["dlm_lineage"])).scalar()
        stats = dict(conn.execute(sa.text("SELECT tablename, count(*) FROM pg_stats WHERE tablename IN "
                                          "('fhir_resource', 'dlm_lineage') GROUP BY tablename")).all())
    registry.engine.dispose()
    # analyzed at 100 new rows, then at twice the rows of the previous analysis: log2 of the growth, plus one
    assert len(analyzed) - 1 <= 2 + (lineage_rows // 100).bit_length()
    assert stats.get("fhir_resource", 0) > 0 and stats.get("dlm_lineage", 0) > 0

    analyzed.clear()
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    lines = (changed / "Condition.ndjson").read_text().splitlines()
    condition = json.loads(lines[0])
    condition["onsetDateTime"] = "2015-02-03"
    (changed / "Condition.ndjson").write_text("\n".join([json.dumps(condition), *lines[1:]]) + "\n")
    done = _load(pg_url, changed)
    assert done["mode"] == "incremental" and 0 < done["mapped"] <= 2 and not done["statistics_refreshed"]
    assert analyzed == []


def _lineage_keys(conn: sa.Connection, lineage: sa.Table) -> tuple:
    inspector = sa.inspect(conn)
    return (inspector.get_pk_constraint(lineage.name, schema=lineage.schema)["constrained_columns"],
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(lineage.name, schema=lineage.schema)))


def test_first_load_builds_the_lineage_keys_at_the_end(cohort_factory, registry_url, monkeypatch):
    """A first load fills the empty lineage without its primary key and omop_id index (PostgreSQL), keeps the
    patient_key index its batches read, and ends with the lineage's keys as a new registry has them; a
    duplicate key written meanwhile fails the load."""
    from registry_schema.constraints import indexes_deferred

    registry = open_registry(registry_url)
    lineage = registry.tables["dlm_lineage"]
    with registry.engine.connect() as conn:
        created = _lineage_keys(conn, lineage)
    during = []
    real_write = etl.pipeline.write_lineage

    def recording(conn, tables, *args):
        during.append(_lineage_keys(conn, lineage))
        real_write(conn, tables, *args)

    monkeypatch.setattr(etl.pipeline, "write_lineage", recording)
    _load(registry_url, cohort_factory(10, 8), batch_size=4)
    with registry.engine.connect() as conn:
        assert _lineage_keys(conn, lineage) == created
    assert created[0] == ["omop_table", "source_key"] and len(created[1]) == 2 and len(during) >= 3
    if registry.engine.dialect.name == "postgresql":
        assert all(keys == ([], [("idx_dlm_lineage_patient_key", ("patient_key",))]) for keys in during)
    else:
        assert all(keys == created for keys in during)
    row = {"omop_table": "person", "source_key": "Patient/x", "omop_id": 1, "patient_key": "p"}
    with pytest.raises(sa.exc.IntegrityError):
        with registry.engine.begin() as conn, indexes_deferred(conn, lineage, keep=("patient_key",)):
            conn.execute(lineage.insert(), [row, {**row, "omop_id": 2}])
    registry.engine.dispose()


def test_lineage_keys_stay_for_a_writer_who_does_not_own_the_lineage(pg_url):
    """The ETL writer role (granted every privilege on the tables, not their ownership) may not drop indexes:
    indexes_deferred leaves them in place for it, and its load goes on."""
    import uuid

    from registry_schema.constraints import indexes_deferred

    registry = open_registry(pg_url)
    lineage = registry.tables["dlm_lineage"]
    role = f"writer_{uuid.uuid4().hex[:8]}"
    table = registry.engine.dialect.identifier_preparer.format_table(lineage)
    with registry.engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}"')
        conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{lineage.schema}" TO "{role}"')
        conn.exec_driver_sql(f'GRANT ALL ON {table} TO "{role}"')
    try:
        with registry.engine.begin() as conn:
            conn.exec_driver_sql(f'SET LOCAL ROLE "{role}"')
            before = _lineage_keys(conn, lineage)
            with indexes_deferred(conn, lineage, keep=("patient_key",)):
                assert _lineage_keys(conn, lineage) == before
                conn.execute(lineage.insert(), {"omop_table": "person", "source_key": "Patient/x", "omop_id": 1})
            assert _lineage_keys(conn, lineage) == before
    finally:
        with registry.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        registry.engine.dispose()
