"""Acceptance (incremental audit): after a load that changes a few patients, the checks counted on the
changed persons only (etl.incremental_checks) give every check the counts a full audit of the same
registry gives, on SQLite and PostgreSQL."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import tempfile

import sqlalchemy as sa

import etl.incremental_checks
from etl.incremental_checks import IncrementalChecks, checks_salt
from etl.pipeline import RunSettings, _global_rows, map_partition, run
from etl.quality import run_checks
from etl.registry import open_registry
from etl.vocabulary import load_code_map
from quality_checks import Check, Frame

TODAY = dt.date(2026, 11, 25)


def _edit(source, target, later_birth: list[str], removed: list[str]) -> None:
    """Copy a cohort with some patients born in 2024 (after their events: plausibility violations in every
    table they have rows in) and some patients removed with all their resources."""
    target.mkdir()
    for path in source.iterdir():
        if path.suffix != ".ndjson":
            shutil.copy(path, target / path.name)
            continue
        lines = []
        for line in path.read_text().splitlines():
            if any(patient in line for patient in removed):
                continue
            if path.name == "Patient.ndjson" and json.loads(line)["id"] in later_birth:
                line = json.dumps({**json.loads(line), "birthDate": "2024-06-01"})
            lines.append(line)
        (target / path.name).write_text("\n".join(lines) + "\n")


def _run(source, url, out):
    return run(RunSettings(source=str(source), registry_url=url, out_dir=out, show_progress=False, today=TODAY))


def _stored(url: str, run_id: str) -> dict:
    """The run's stored check counts."""
    registry = open_registry(url)
    table = registry.tables["dlm_quality_result"]
    with registry.engine.connect() as conn:
        return {r.check_name: (r.rows_checked, r.rows_violated)
                for r in conn.execute(sa.select(table).where(table.c.run_id == run_id))}


def _stored_and_full(url: str, run_id: str) -> tuple[dict, dict]:
    """The run's stored check counts, and those of a full audit of the registry as committed."""
    registry = open_registry(url)
    with registry.engine.connect() as conn:
        full = {r.check.name: (r.rows_checked, r.rows_violated) for r in run_checks(conn, registry.tables, TODAY)}
    return _stored(url, run_id), full


def test_checks_on_changed_persons_equal_a_full_audit(cohort_factory, tmp_path, registry_factory, monkeypatch):
    monkeypatch.setattr(etl.incremental_checks, "SCOPE_MIN_PERSONS", 0)
    original = cohort_factory(30, 11)
    ids = [json.loads(line)["id"] for line in (original / "Patient.ndjson").read_text().splitlines()]
    edited = tmp_path / "edited"
    _edit(original, edited, ids[:2], ids[2:3])
    url = registry_factory()
    spill = tmp_path / "spill"  # where the changed persons' rows before the load are kept, during the run
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))

    first = _run(original, url, tmp_path / "o1")
    assert first["quality"]["scope"]["mode"] == "full"
    baseline = _stored(url, first["run"]["run_id"])

    second = _run(edited, url, tmp_path / "o2")
    scope = second["quality"]["scope"]
    assert scope["mode"] == "changed persons"
    assert scope["persons_rechecked"] == {"before": 3, "after": 2}
    assert scope["checks_on_changed_persons"] > 500 and scope["checks_on_whole_registry"] > 0
    assert not list(spill.iterdir())
    stored, full = _stored_and_full(url, second["run"]["run_id"])
    assert stored == full
    # The edit moved counts: births after events are violations; the removed patient's rows are gone.
    worse = [n for n in full if n.startswith("plausibleAfterBirth") and full[n][1] > baseline[n][1]]
    assert worse and any(full[n][0] < baseline[n][0] for n in full if n.startswith("isRequired"))

    third = _run(original, url, tmp_path / "o3")  # back to the original: the first run's counts
    assert third["quality"]["scope"]["mode"] == "changed persons"
    stored, full = _stored_and_full(url, third["run"]["run_id"])
    assert stored == full == baseline


def _scoped_before(url: str, person_ids: list[int]) -> bool:
    """Whether an audit would count these persons before replacing them (in a transaction rolled back)."""
    registry = open_registry(url)
    with registry.engine.connect() as conn, conn.begin() as transaction:
        checks = IncrementalChecks(conn, registry.tables, TODAY, checks_salt(_global_rows(load_code_map(), "", TODAY)[0]))
        checks.before(person_ids)
        transaction.rollback()
    kept = checks.retired is not None
    if kept:
        checks.retired.close()
    return kept


def test_audit_runs_in_full_when_the_state_cannot_be_used(cohort_factory, tmp_path, monkeypatch):
    """Too few persons, too many changed, a partitioned load (no state): full counts; a check whose
    definition changed is counted on the whole registry, the others still on the changed persons."""
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    original = cohort_factory(30, 11)
    ids = [json.loads(line)["id"] for line in (original / "Patient.ndjson").read_text().splitlines()]
    _run(original, url, tmp_path / "o1")
    assert not _scoped_before(url, [1])                 # 30 persons < SCOPE_MIN_PERSONS
    monkeypatch.setattr(etl.incremental_checks, "SCOPE_MIN_PERSONS", 0)
    assert not _scoped_before(url, list(range(1, 8)))   # 7 of 30 > SCOPE_LIMIT
    assert _scoped_before(url, [1])

    edited = tmp_path / "edited"
    _edit(original, edited, ids[:2], ids[2:3])
    monkeypatch.setattr(etl.incremental_checks._Retired, "CANCEL_ROWS", 0)  # every row validated, none cancelled
    scoped = _run(edited, url, tmp_path / "o2")
    assert scoped["quality"]["scope"]["mode"] == "changed persons"
    stored, full = _stored_and_full(url, scoped["run"]["run_id"])
    assert stored == full

    import quality_checks.dqd as dqd

    real = dqd._check

    def stricter(check_type, *args):
        check = real(check_type, *args)
        return dataclasses.replace(check, threshold_pct=0.5) if check_type == "plausibleAfterBirth" else check

    monkeypatch.setattr(dqd, "_check", stricter)
    result = _run(edited, url, tmp_path / "o3")  # the same input: no person re-counted
    assert result["quality"]["scope"]["persons_rechecked"] == {"before": 0, "after": 0}
    stored, full = _stored_and_full(url, result["run"]["run_id"])
    assert stored == full
    changed = [n for n in full if n.startswith("plausibleAfterBirth")]
    assert changed and result["quality"]["scope"]["checks_on_whole_registry"] == \
        scoped["quality"]["scope"]["checks_on_whole_registry"] + len(changed)

    map_partition(open_registry(url), load_code_map(), "part", 0, 2, 24.0, TODAY)
    assert not _scoped_before(url, [1])                 # a partitioned load leaves no state


def test_rows_kept_and_rows_now_cancel_out():
    """Equal rows before and after count nothing; the excess of either side counts -1 or +1 per row."""
    before = iter([(1, "a"), (1, "a"), (2, None), (3, "c")])
    now = [[(1, "a"), (2, None)], [(4, "d"), (4, "d")]]
    assert sorted(etl.incremental_checks._net(before, now), key=str) == sorted(
        [(1, "a", -1), (3, "c", -1), (4, "d", 1), (4, "d", 1)], key=str)


def test_uniqueness_counts_come_from_the_values_the_changed_persons_share():
    """Key values before and after for a uniqueness check: the changed person's rows and every row sharing
    a value with them (here person 2's), as the registry had them and has them; person 3's are untouched."""
    engine = sa.create_engine("sqlite://")
    meta = sa.MetaData()
    rows = sa.Table("t", meta, sa.Column("id", sa.Integer), sa.Column("person_id", sa.Integer))
    scope = sa.Table("scope", meta, sa.Column("person_id", sa.Integer))
    meta.create_all(engine)

    def scoped(ids):
        return Frame(sa.select(rows.c.id, rows.c.person_id).where(rows.c.person_id.in_(ids)), few_rows=True)

    frame = Frame(sa.select(rows.c.id, rows.c.person_id), scoped=scoped)
    check = Check("isPrimaryKey:t.id", "isPrimaryKey", "t", "id", "critical", 0.0, "ExpectColumnValuesToBeUnique",
                  {"column": "id"})
    kept = etl.incremental_checks._Retired()
    with engine.begin() as conn:
        conn.execute(scope.insert(), [{"person_id": 1}])
        conn.execute(rows.insert(), [{"id": i, "person_id": p} for i, p in
                                     [(1, 1), (2, 1), (None, 1), (2, 2), (5, 3), (7, 3), (7, 3)]])
        planned = etl.incremental_checks._scoped(check)
        kept.keep(conn, planned.frame, scoped(sa.select(scope.c.person_id)), [check])
        conn.execute(rows.delete().where(rows.c.person_id == 1))
        conn.execute(rows.insert(), [{"id": i, "person_id": 1} for i in (2, 3, 3)])
        earlier, now = kept.key_frames(conn, planned, frame, sa.select(scope.c.person_id))
        values = [sorted(f.read(conn)["id"].tolist(), key=str) for f in (earlier, now)]
    kept.close()
    assert values[0][:3] == [1, 2, 2] and len(values[0]) == 4 and values[0][3] != values[0][3]  # NaN: missing
    assert values[1] == [2, 2, 3, 3]
