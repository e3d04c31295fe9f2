"""Every generated DQD check type catches a deliberately broken fixture and passes the clean one, on
SQLite and PostgreSQL (issue #5 acceptance).

The fixture is a published registry of a small synthetic cohort. Each case breaks it inside a
transaction that is rolled back, then runs only the check under test. Where this registry's DDL makes
the defect impossible (NOT NULL, PRIMARY KEY, PostgreSQL's integer types) the case breaks the frame as
read instead, as a registry built by other tools can be broken.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

import pytest
import sqlalchemy as sa

import etl.quality
from etl.pipeline import RunSettings, run
from etl.quality import plan, validate
from etl.registry import open_registry
from quality_checks import Frame
from quality_checks.dqd import spec_rows

TODAY = dt.date(2026, 1, 15)


@pytest.fixture(scope="module")
def registry(module_registry_url, cohort_factory, tmp_path_factory):
    run(RunSettings(source=str(cohort_factory(25, 8)), registry_url=module_registry_url,
                    out_dir=tmp_path_factory.mktemp("out"), show_progress=False))
    return open_registry(module_registry_url)


# -- helpers that break (or complete) the registry ----------------------------------------------------

def _pk(table: sa.Table) -> sa.Column:
    return list(table.primary_key.columns)[0] if table.primary_key.columns else list(table.c)[0]


def first(conn, table: sa.Table, *where) -> dict:
    return dict(conn.execute(sa.select(table).where(*where).order_by(list(table.c)[0]).limit(1)).mappings().one())


def clone(conn, table: sa.Table, **changes) -> dict:
    """Insert a copy of the table's first row (new key) with `changes`."""
    row = first(conn, table)
    key = _pk(table)
    row[key.name] = conn.execute(sa.select(sa.func.max(key))).scalar_one() + 1000
    row.update(changes)
    conn.execute(table.insert(), [row])
    return row


def update_all(conn, table: sa.Table, **values) -> None:
    conn.execute(table.update().values(**values))


def update_first(conn, table: sa.Table, **values) -> None:
    key = _pk(table)
    conn.execute(table.update().where(key == first(conn, table)[key.name]).values(**values))


def person_of_gender(conn, t, gender: int) -> int:
    return first(conn, t["person"], t["person"].c.gender_concept_id == gender)["person_id"]


def move_after_death(conn, t, table: str, field: str, days: int) -> None:
    """Date every `table` row of each dead person `days` after the death."""
    for person, died in conn.execute(sa.select(t["death"].c.person_id, t["death"].c.death_date)):
        conn.execute(t[table].update().where(t[table].c.person_id == person)
                     .values({field: died + dt.timedelta(days=days)}))


def drug_era(conn, t, concept: int) -> None:
    conn.execute(t["drug_era"].insert(), [{
        "drug_era_id": 1, "person_id": first(conn, t["person"])["person_id"], "drug_concept_id": concept,
        "drug_era_start_date": dt.date(2020, 1, 1), "drug_era_end_date": dt.date(2020, 3, 1),
        "drug_exposure_count": 3, "gap_days": 0}])


def visit_around_conditions(conn, t, start_offset: int) -> None:
    """One visit for the first condition's person, `start_offset` days from that person's conditions."""
    condition = first(conn, t["condition_occurrence"])
    day = condition["condition_start_date"] + dt.timedelta(days=start_offset)
    conn.execute(t["visit_occurrence"].insert(), [{
        "visit_occurrence_id": 1, "person_id": condition["person_id"], "visit_concept_id": 0,
        "visit_start_date": day, "visit_end_date": day, "visit_type_concept_id": 0}])
    conn.execute(t["condition_occurrence"].update()
                 .where(t["condition_occurrence"].c.condition_occurrence_id == condition["condition_occurrence_id"])
                 .values(visit_occurrence_id=1))


def condition_eras(conn, t) -> None:
    conditions = t["condition_occurrence"]
    persons = conn.execute(sa.select(conditions.c.person_id, sa.func.min(conditions.c.condition_start_date))
                           .group_by(conditions.c.person_id)).all()
    conn.execute(t["condition_era"].insert(), [
        {"condition_era_id": i + 1, "person_id": p, "condition_concept_id": 198700, "condition_era_start_date": d,
         "condition_era_end_date": d, "condition_occurrence_count": 1} for i, (p, d) in enumerate(persons)])


def _concept_row(check: str, **conditions) -> dict:
    return next(r for r in spec_rows("Concept_Level") if r[check].strip() and r["conceptId"].isdigit()
                and all(r[k] == v for k, v in conditions.items()))


GENDER_ROW = _concept_row("plausibleGender", cdmTableName="CONDITION_OCCURRENCE", plausibleGender="Male")
UNIT_ROW = _concept_row("plausibleUnitConceptIds", cdmTableName="MEASUREMENT")
VALUE_ROW = next(r for r in spec_rows("Concept_Level") if r["plausibleValueLow"].strip() and r["unitConceptId"].strip()
                 and r["conceptId"].isdigit())


def condition_of(gender: int):
    def insert(conn, t):
        clone(conn, t["condition_occurrence"], condition_concept_id=int(GENDER_ROW["conceptId"]),
              person_id=person_of_gender(conn, t, gender))
    return insert


def record_with(row: dict, unit: int, value: float | None = None):
    """Insert a copy of a record of the row's table with the row's concept, `unit` and `value`."""
    table, field = row["cdmTableName"].lower(), row["cdmFieldName"].lower()

    def insert(conn, t):
        clone(conn, t[table], **{field: int(row["conceptId"]), "unit_concept_id": unit, "value_as_number": value})
    return insert


def null_first(field: str):
    def patch(data):
        data.loc[data.index[0], field] = None
        return data
    return patch


def duplicate_first(data):
    import pandas as pd

    return pd.concat([data, data.iloc[[0]]], ignore_index=True)


def drop_column(conn, t, table: str, column: str) -> None:
    name = conn.dialect.identifier_preparer.format_table(t[table])
    conn.execute(sa.text(f"ALTER TABLE {name} DROP COLUMN {column}"))


@dataclass(frozen=True)
class Case:
    check: str
    broken: Callable | None = None            # breaks the database (conn, tables)
    clean: Callable | None = None             # completes a clean fixture where the table is empty
    patch: tuple[str, Callable] | None = None  # breaks a frame as read: (frame name, dataframe -> dataframe)
    sqlite_only: bool = False


VALUE_CHECK = (f"{VALUE_ROW['cdmTableName'].lower()}.{VALUE_ROW['cdmFieldName'].lower()}:{VALUE_ROW['conceptId']}"
               f":unit{VALUE_ROW['unitConceptId']}")
CASES = {
    "cdmTable": Case("cdmTable:cohort", lambda c, t: t["cohort"].drop(c)),
    "cdmField": Case("cdmField:note_nlp", lambda c, t: drop_column(c, t, "note_nlp", "nlp_system")),
    "isRequired": Case("isRequired:person.gender_concept_id",
                       patch=("dqd:person", null_first("gender_concept_id"))),
    "isPrimaryKey": Case("isPrimaryKey:person.person_id", patch=("dqd:person", duplicate_first)),
    "cdmDatatype": Case("cdmDatatype:measurement.measurement_concept_id",
                        lambda c, t: update_first(c, t["measurement"], measurement_concept_id="4.5x"),
                        sqlite_only=True),
    "isForeignKey": Case("isForeignKey:condition_occurrence.person_id",
                         lambda c, t: update_first(c, t["condition_occurrence"], person_id=987654321)),
    "fkDomain": Case("fkDomain:condition_occurrence.condition_concept_id",
                     lambda c, t: update_first(c, t["condition_occurrence"], condition_concept_id=8507)),
    "fkClass": Case("fkClass:drug_era.drug_concept_id", lambda c, t: drug_era(c, t, 8507),
                    clean=lambda c, t: drug_era(c, t, 1318011)),
    "isStandardValidConcept": Case(
        "isStandardValidConcept:condition_occurrence.condition_concept_id",
        lambda c, t: update_all(c, t["concept"], standard_concept=None)),
    "measureValueCompleteness": Case("measureValueCompleteness:condition_occurrence.condition_concept_id",
                                     patch=("dqd:condition_occurrence", null_first("condition_concept_id"))),
    "standardConceptRecordCompleteness": Case(
        "standardConceptRecordCompleteness:condition_occurrence.condition_concept_id",
        lambda c, t: update_all(c, t["condition_occurrence"], condition_concept_id=0)),
    "sourceConceptRecordCompleteness": Case("sourceConceptRecordCompleteness:death.cause_source_concept_id",
                                            lambda c, t: update_all(c, t["death"], cause_source_concept_id=0),
                                            clean=lambda c, t: update_all(c, t["death"], cause_source_concept_id=198700)),
    "sourceValueCompleteness": Case("sourceValueCompleteness:condition_occurrence.condition_source_value",
                                    lambda c, t: update_all(c, t["condition_occurrence"], condition_concept_id=0)),
    "plausibleValueLow": Case("plausibleValueLow:person.year_of_birth",
                              lambda c, t: update_all(c, t["person"], year_of_birth=1799)),
    "plausibleValueHigh": Case("plausibleValueHigh:measurement.measurement_date",
                               lambda c, t: update_all(c, t["measurement"], measurement_date=dt.date(2199, 1, 1))),
    "plausibleTemporalAfter": Case(
        "plausibleTemporalAfter:drug_exposure.drug_exposure_end_date",
        lambda c, t: update_all(c, t["drug_exposure"], drug_exposure_end_date=dt.date(1990, 1, 1))),
    "plausibleDuringLife": Case("plausibleDuringLife:condition_occurrence.condition_start_date",
                                lambda c, t: move_after_death(c, t, "condition_occurrence", "condition_start_date",
                                                              61)),
    "plausibleBeforeDeath": Case("plausibleBeforeDeath:measurement.measurement_date",
                                 lambda c, t: move_after_death(c, t, "measurement", "measurement_date", 90)),
    "plausibleAfterBirth": Case("plausibleAfterBirth:measurement.measurement_date",
                                lambda c, t: update_all(c, t["measurement"], measurement_date=dt.date(1900, 1, 1))),
    "withinVisitDates": Case("withinVisitDates:condition_occurrence.condition_start_date",
                             lambda c, t: visit_around_conditions(c, t, 30),
                             clean=lambda c, t: visit_around_conditions(c, t, 7)),
    "plausibleStartBeforeEnd": Case(
        "plausibleStartBeforeEnd:observation_period.observation_period_start_date",
        lambda c, t: update_first(c, t["observation_period"], observation_period_end_date=dt.date(1950, 1, 1))),
    "measurePersonCompleteness": Case("measurePersonCompleteness:observation_period",
                                      lambda c, t: c.execute(t["observation_period"].delete().where(
                                          t["observation_period"].c.person_id
                                          == first(c, t["person"])["person_id"]))),
    "measureConditionEraCompleteness": Case("measureConditionEraCompleteness:condition_era",
                                            lambda c, t: None, clean=condition_eras),
    "measureObservationPeriodOverlap": Case("measureObservationPeriodOverlap:observation_period",
                                            lambda c, t: clone(c, t["observation_period"])),
    "plausibleGender": Case(f"plausibleGender:condition_occurrence.condition_concept_id:{GENDER_ROW['conceptId']}",
                            condition_of(8532), clean=condition_of(8507)),
    "plausibleUnitConceptIds": Case(
        f"plausibleUnitConceptIds:measurement.measurement_concept_id:{UNIT_ROW['conceptId']}",
        record_with(UNIT_ROW, 8582), clean=record_with(UNIT_ROW, int(UNIT_ROW["plausibleUnitConceptIds"].split(",")[0]))),
    "plausibleValueLow (concept)": Case(
        f"plausibleValueLow:{VALUE_CHECK}",
        record_with(VALUE_ROW, int(VALUE_ROW["unitConceptId"]), float(VALUE_ROW["plausibleValueLow"]) - 1),
        clean=record_with(VALUE_ROW, int(VALUE_ROW["unitConceptId"]), float(VALUE_ROW["plausibleValueLow"]))),
    "plausibleValueHigh (concept)": Case(
        f"plausibleValueHigh:{VALUE_CHECK}",
        record_with(VALUE_ROW, int(VALUE_ROW["unitConceptId"]), float(VALUE_ROW["plausibleValueHigh"]) + 1),
        clean=record_with(VALUE_ROW, int(VALUE_ROW["unitConceptId"]), float(VALUE_ROW["plausibleValueHigh"]))),
}


def _result(registry, case: Case, setup: Callable | None, patch: tuple | None):
    """Run only the case's check on the registry changed by `setup` (rolled back afterwards)."""
    with registry.engine.connect() as conn:
        transaction = conn.begin()
        try:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SET CONSTRAINTS ALL DEFERRED"))
            else:  # pysqlite opens its transaction at the first DML only: DDL before it would commit
                conn.execute(registry.tables["metadata"].delete().where(sa.false()))
            if setup:
                setup(conn, registry.tables)
            checks, frames = plan(conn, registry.tables, TODAY)
            selected = [c for c in checks if c.name == case.check]
            assert len(selected) == 1, f"{case.check} was not generated"
            if patch:
                frame, change = patch
                original = frames[frame]
                frames[frame] = Frame(lambda c: change(original.read(c)))
            return validate(conn, selected, frames)[0]
        finally:
            transaction.rollback()


def test_cases_cover_every_generated_check_type():
    generated = {r["checkName"] for r in spec_rows("Check_Descriptions")} - {"plausibleGenderUseDescendants"}
    assert generated == {name.split(" ")[0] for name in CASES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_passes_the_clean_fixture_and_catches_the_broken_one(registry, name):
    case = CASES[name]
    if case.sqlite_only and registry.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's column types make this defect impossible to store")
    clean = _result(registry, case, case.clean, None)
    assert clean.passed and clean.rows_checked > 0, (clean.rows_checked, clean.rows_violated)
    broken = _result(registry, case, case.broken, case.patch)
    assert not broken.passed and broken.rows_violated > 0, (broken.rows_checked, broken.rows_violated)


def test_the_published_demo_fails_no_critical_dqd_check(registry):
    with registry.engine.connect() as conn:
        checks, frames = plan(conn, registry.tables, TODAY)
        results = validate(conn, checks, frames)
    assert len(results) > 700
    assert not [r.check.name for r in results if r.check.severity == "critical" and not r.passed]


def test_data_docs_show_every_suite_of_the_run(registry, tmp_path):
    from etl.quality import run_checks

    docs = tmp_path / "data_docs"
    (docs / "validations").mkdir(parents=True)
    (docs / "validations" / "stale.html").write_text("an older run's page")
    with registry.engine.connect() as conn:
        results = run_checks(conn, registry.tables, TODAY, docs)
    frames = {r.check.frame for r in results}
    index = (docs / "index.html").read_text()
    assert all(f"dlmreg.{frame}" in index for frame in frames)
    assert len(list((docs / "validations").rglob("*.html"))) == len(frames)  # the stale page is gone


# -- the bounded batches give the results of one validation of the whole frame -----------------------

def _whole(frames: dict[str, Frame]) -> dict[str, Frame]:
    """Every frame read whole and validated in one batch (as the checks ran before issue #9)."""
    return {name: Frame(lambda c, f=f: f.read(c)) for name, f in frames.items()}


def _counts(results) -> dict[str, tuple[int, int]]:
    return {r.check.name: (r.rows_checked, r.rows_violated) for r in results}


BREAKING = [case.broken for case in CASES.values()
            if case.broken and case.check.split(":")[0] not in ("cdmTable", "cdmField", "cdmDatatype")]


def _both_ways(registry, setups, validations: Callable[[], int]) -> list[tuple[dict, int]]:
    """Counts in batches of a few hundred values, then of whole frames, each with the number of
    great-expectations validations it took (`validations()` counts them so far)."""
    with registry.engine.connect() as conn:
        transaction = conn.begin()
        try:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SET CONSTRAINTS ALL DEFERRED"))
            for setup in setups:
                setup(conn, registry.tables)
            checks, frames = plan(conn, registry.tables, TODAY)
            out = []
            for frames_read, chunk_values in ((frames, 300), (_whole(frames), etl.quality.CHUNK_VALUES)):
                before = validations()
                counts = _counts(validate(conn, checks, frames_read, chunk_values=chunk_values))
                out.append((counts, validations() - before))
            return out
        finally:
            transaction.rollback()


def test_counted_batches_give_the_results_of_whole_frames(registry, monkeypatch):
    """Every check's rows checked and violated are those of one validation of the whole frame, with
    batches of a few distinct rows (so that groups span several), on the registry broken by every fixture
    at once (its clean rows included)."""
    calls = []
    real = etl.quality._run
    monkeypatch.setattr(etl.quality, "_run", lambda *args: calls.append(1) or real(*args))
    (broken, batched), (broken_whole, whole) = _both_ways(registry, BREAKING, lambda: len(calls))
    assert broken == broken_whole
    assert batched > whole + 50, (batched, whole)  # many groups span several batches
    with registry.engine.connect() as conn:
        clean = {r.check_name: r.rows_violated for r in conn.execute(sa.select(registry.tables["dlm_quality_result"]))}
    newly_violated = {name for name, (_, count) in broken.items() if count and not clean.get(name)}
    assert len(newly_violated) >= len(BREAKING) // 2, newly_violated  # the breakers do overlap


def test_uniqueness_batches_never_split_a_key(registry):
    """Uniqueness is decided batch by batch: rows ordered by the key, a key's rows in one batch."""
    from quality_checks import Check

    t = registry.tables["condition_occurrence"]
    frame = Frame(sa.select(t.c.person_id, t.c.condition_concept_id, t.c.condition_type_concept_id,
                            t.c.condition_end_date))
    checks = [Check(f"unique:{columns}", "isPrimaryKey", "conditions", columns[-1], "critical", 0.0,
                    *(("ExpectColumnValuesToBeUnique", {"column": columns[0]}) if len(columns) == 1 else
                      ("ExpectCompoundColumnsToBeUnique", {"column_list": list(columns)})))
              for columns in [("condition_concept_id",), ("person_id", "condition_type_concept_id"),
                              ("condition_end_date",)]]  # the last with NULLs
    with registry.engine.connect() as conn:
        for size in (1, 4, 10, 100_000):
            chunked = _counts(validate(conn, checks, {"conditions": frame}, chunk_values=size))
            assert chunked == _counts(validate(conn, checks, _whole({"conditions": frame}))), size
    assert chunked["unique:('condition_concept_id',)"][1] and chunked["unique:('person_id', 'condition_type_concept_id')"][1]


def test_a_frame_of_no_rows_is_counted_without_validation(registry, tmp_path, monkeypatch):
    """Counted batches of no rows (most frames of changes in an incremental audit) are not validated: their
    checks get what great-expectations gives on no rows (nothing checked, none violated, passed), and Data
    Docs still show the frame's suite."""
    from quality_checks import Check

    t = registry.tables["condition_occurrence"]
    frame = Frame(sa.select(t.c.condition_concept_id, t.c.condition_start_date, t.c.condition_end_date)
                  .where(t.c.person_id < 0))
    checks = [Check("notNull", "isRequired", "none", "condition_concept_id", "critical", 0.0,
                    "ExpectColumnValuesToNotBeNull", {"column": "condition_concept_id"}),
              Check("between", "plausibleValue", "none", "condition_concept_id", "warning", 1.0,
                    "ExpectColumnValuesToBeBetween", {"column": "condition_concept_id", "min_value": 1}),
              Check("ordered", "plausibleStartBeforeEnd", "none", "condition_end_date", "warning", 1.0,
                    "ExpectColumnPairValuesAToBeGreaterThanB", {
                        "column_A": "condition_end_date", "column_B": "condition_start_date", "or_equal": True,
                        "ignore_row_if": "either_value_is_missing"})]
    calls = []
    real = etl.quality._run
    monkeypatch.setattr(etl.quality, "_run", lambda *args: calls.append(args[1]) or real(*args))
    docs = tmp_path / "data_docs"
    with registry.engine.connect() as conn:
        skipped = validate(conn, checks, {"none": frame})
        assert not calls
        with_docs = validate(conn, checks, {"none": frame}, docs)
        assert [len(suite.expectations) for suite in calls] == [0]  # only the batch's identity, for the docs
        whole = validate(conn, checks, _whole({"none": frame}))
    assert [(r.counts, r.passed) for r in skipped] == [(r.counts, r.passed) for r in with_docs] \
        == [(r.counts, r.passed) for r in whole] == [((0, 0, 0, 0), True)] * 3
    assert "dlmreg.none" in (docs / "index.html").read_text()
    (page,) = (docs / "validations").rglob("*.html")
    assert all(column in page.read_text() for column in ("condition_concept_id", "condition_end_date"))
