"""Streaming stage (issue 9): element-wise validation gives the fhir.resources verdicts; staging through
PostgreSQL COPY + set-based upsert and through SQLite executemany gives the same table; re-staging changed
and deleted input gives the same staging as a fresh stage; memory does not hold the resources' bodies."""
from __future__ import annotations

import gzip
import json
import random
import shutil
import tracemalloc

import pytest
import sqlalchemy as sa

import etl.stage
from etl.extract import FileSource, RawRecord
from etl.registry import open_registry
from etl.stage import stage_source
from etl.stage.deidentify import deidentified_text
from etl.stage.parse import Rejected, parse_record
from etl.stage.pseudonym import Pseudonymizer
from etl.stage.store import CopyStagingStore, StagingStore
from etl.stage.validate import ElementValidator, ModelValidator, UnknownType, make_validator, model_class
from etl.transform import SUPPORTED_TYPES
from etl.vocabulary import load_code_map
from tests.test_hl7_examples import examples  # noqa: F401  (fixture: the HL7 R4 example resources)
from tests.test_incremental_load import change_and_delete

KEY = "test-pseudonym-key"
COMPARED = ("resource_type", "resource_id", "version_id", "last_updated", "patient_key", "sha256", "source",
            "resource_json")


def _verdict(validator, resource: dict) -> str | None:
    try:
        return validator.check(resource)
    except Exception as exc:  # a crash is a disagreement, reported with the resource
        return f"CRASH {exc!r}"


def _mutate(rng: random.Random, value, depth: int = 0):
    """One random fault somewhere in a resource: a wrong type, a null, a removed or an unknown element."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        if key == "resourceType":
            return value
        value = dict(value)
        draw = rng.random()
        if draw < 0.5 or depth > 3:
            value[key] = rng.choice([42, "x", None, [], {}, [None], {"bogus": 1}, True, "2020-13-45", 1.5,
                                     [{"text": 1}], "2020-01-01"])
        elif draw < 0.6:
            value.pop(key)
        elif draw < 0.7:
            value["bogus" + key] = 1
        else:
            value[key] = _mutate(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value:
        value = list(value)
        index = rng.randrange(len(value))
        value[index] = _mutate(rng, value[index], depth + 1)
        return value
    return rng.choice([42, "x", None, {}, [], "2020-01-01", True])


def test_element_validation_agrees_with_the_model_on_hl7_examples(examples):  # noqa: F811
    """Every HL7 R4 example under 1 MB (all resource types, about 60 of them invalid for the R4B models) and,
    in each one under 10 kB, three random faults: the element validator accepts exactly what `model_validate`
    accepts. The 17 larger ones (mostly Bundles of the specification's definitions, up to 30 MB) took two thirds of
    the test's time; tests/test_hl7_examples.py stages them all."""
    model, elements = ModelValidator(), ElementValidator()
    rng = random.Random(9)
    checked, rejected, disagreements = 0, 0, []
    for resource in examples:
        try:
            model_class(resource["resourceType"])
        except UnknownType:
            continue  # no R4B model for this type: parse_record quarantines it as unknown
        size = len(json.dumps(resource))
        if size > 1_000_000:
            continue
        small = size < 10_000
        for variant in [resource] + [_mutate(rng, resource) for _ in range(3 if small else 0)]:
            expected, got = _verdict(model, variant), _verdict(elements, variant)
            checked += 1
            rejected += expected is not None
            if (expected is None) != (got is None) or (got or "").startswith("CRASH"):
                disagreements.append((resource["resourceType"], resource["id"], expected, got))
    assert not disagreements[:20], f"{len(disagreements)} disagreements"
    assert checked > 15000 and rejected > 4000


def test_planted_faults_are_rejected_with_the_element_named():
    good = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "size"},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2020-01-02", "valueBoolean": True}
    faults = {
        "status": good | {"status": 42},
        "bogus": good | {"bogus": 1},
        "code": {k: v for k, v in good.items() if k != "code"},
        "effective": good | {"effectivePeriod": {"start": "2020-01-01"}},
        "category": good | {"category": [None]},
        "subject": good | {"subject": {"reference": 7}},
        "effectiveDateTime": good | {"effectiveDateTime": "2020-13-45"},
    }
    validator = ElementValidator()
    assert validator.check(good) is None and ModelValidator().check(good) is None
    for element, resource in faults.items():
        reason = validator.check(resource)
        assert reason and reason.startswith(element), (element, reason)
        assert ModelValidator().check(resource), element
        parsed = parse_record(RawRecord(json.dumps(resource), "test:1", "Observation"), validator)
        assert isinstance(parsed, Rejected) and parsed.reason.startswith(f"invalid Observation: {element}")
    # A value remembered as valid for one element is not taken as valid for another, nor a list for its item.
    assert validator.check(good | {"category": {"text": "x"}}) is not None
    assert validator.check(good | {"valueString": "final"}) is not None   # two value[x]


def test_validation_mode_setting(monkeypatch):
    monkeypatch.setenv("DLMREG_FHIR_VALIDATION", "model")
    assert isinstance(make_validator(), ModelValidator)
    monkeypatch.setenv("DLMREG_FHIR_VALIDATION", "elements")
    assert isinstance(make_validator(), ElementValidator)
    monkeypatch.setenv("DLMREG_FHIR_VALIDATION", "everything")
    with pytest.raises(ValueError, match="DLMREG_FHIR_VALIDATION"):
        make_validator()


def _varied_source(cohort_factory, tmp_path, name="source"):
    """A cohort with what staging must handle: patients outside the cohort, a Patient and Observations
    given more than once (newer changed copies before and after the original, in the same batch and in a
    later one, an older copy, an identical copy), an orphan, invalid resources, an unused type, and a
    Patient without birthDate with a resource of its own."""
    clean = cohort_factory(30, 5, non_cohort_share=0.2)
    source = tmp_path / name
    source.mkdir()
    for path in [*clean.glob("*.ndjson"), clean / "truth.json"]:
        shutil.copy(path, source / path.name)
    codes = load_code_map()
    cohort = {c["subject"]["reference"] for c in map(json.loads, (clean / "Condition.ndjson").read_text().splitlines())
              if codes.meaning(c.get("code")) == "liver_metastasis"}
    observations = [line for line in (clean / "Observation.ndjson").read_text().splitlines()
                    if json.loads(line)["subject"]["reference"] in cohort]
    patients = (clean / "Patient.ndjson").read_text().splitlines()
    newer = json.loads(observations[0]) | {"meta": {"lastUpdated": "2030-01-01T00:00:00Z"}, "valueBoolean": False}
    # Observation.001.ndjson is read before Observation.ndjson: "newer" replaces the copy read after it.
    twice = json.loads(observations[1]) | {"id": "twice", "meta": {"lastUpdated": "2031-01-01T00:00:00Z"}}
    older = twice | {"meta": {"lastUpdated": "1990-01-01T00:00:00Z"}, "status": "amended"}
    newest = twice | {"meta": {"lastUpdated": "2032-01-01T00:00:00Z"}, "status": "corrected"}
    patient_again = json.loads(patients[0]) | {"meta": {"lastUpdated": "2030-01-01T00:00:00Z"}, "gender": "other"}
    extra = [json.dumps(newer), json.dumps(twice), json.dumps(older), json.dumps(newest), observations[3],
             json.dumps(json.loads(observations[4]) | {"id": "orphan", "subject": {"reference": "Patient/nobody"}}),
             json.dumps(json.loads(observations[5]) | {"id": "bad", "status": 42}),
             json.dumps(json.loads(observations[6]) | {"id": "bad-2", "effectivePeriod": {"start": "2020"}}),
             json.dumps({"resourceType": "Observation", "id": "of-no-birth", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": "Patient/no-birth"}})]
    (source / "Observation.001.ndjson").write_text("\n".join(extra) + "\n")
    # Read after Observation.ndjson: replaces a row written in an earlier batch.
    latest = json.loads(observations[7]) | {"meta": {"lastUpdated": "2033-01-01T00:00:00Z"}, "note": [{"text": "latest"}]}
    with gzip.open(source / "Observation.ndjson.gz", "wt") as handle:
        handle.write(json.dumps(latest) + "\n")
    (source / "Patient.001.ndjson").write_text("\n".join([
        json.dumps(patient_again), json.dumps({"resourceType": "Patient", "id": "no-birth", "gender": "female"})]) + "\n")
    (source / "Practitioner.ndjson").write_text(json.dumps({"resourceType": "Practitioner", "id": "dr"}) + "\n")
    condition = json.loads((clean / "Condition.ndjson").read_text().splitlines()[0])
    (source / "Condition.001.ndjson").write_text(json.dumps(
        condition | {"id": "orphan-condition", "subject": {"reference": "Patient/nobody", "display": "Ann Smith"}}) + "\n")
    return source


def _stage(url: str, source, run_id: str, delta: bool = False):
    registry = open_registry(url)
    accounting = stage_source(registry.engine, registry.tables, FileSource(source, delta), load_code_map(),
                              Pseudonymizer(KEY), run_id, SUPPORTED_TYPES, show_progress=False)
    registry.engine.dispose()
    return accounting


def _staging(url: str, columns=COMPARED, run_id: str = "run-1") -> list[tuple]:
    """Staging rows (without fetched_at) and the run's quarantine rows, in a stable order."""
    registry = open_registry(url)
    s = registry.tables["fhir_resource"]
    with registry.engine.connect() as conn:
        rows = conn.execute(sa.select(*[s.c[c] for c in columns]).order_by(s.c.resource_type, s.c.resource_id)).all()
        quarantine = registry.tables["dlm_quarantine"]
        reasons = sorted(conn.execute(sa.select(quarantine.c.location, quarantine.c.reason, quarantine.c.sha256,
                                                quarantine.c.raw_text).where(quarantine.c.run_id == run_id)).all())
    registry.engine.dispose()
    return [tuple(r) for r in rows] + [("quarantine", *r) for r in reasons]


def _balanced(accounting) -> bool:
    return accounting.resources_read == accounting.loaded + sum(accounting.quarantined.values()) + \
        sum(accounting.excluded.values())


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 7 rows: many flushes, duplicates inside one batch and across batches."""
    monkeypatch.setattr(etl.stage, "BATCH_ROWS", 7)


def test_copy_and_executemany_give_the_same_staging(cohort_factory, tmp_path, pg_url, small_batches):
    source = _varied_source(cohort_factory, tmp_path)
    lite = f"sqlite:///{tmp_path / 'r.sqlite'}"
    registry = open_registry(pg_url)
    assert registry.schemas.staging == "staging"   # schema-qualified staging table
    with registry.engine.begin() as conn:
        store = StagingStore.for_connection(conn, registry.tables["fhir_resource"])
        assert isinstance(store, CopyStagingStore)
        store.close()
    registry.engine.dispose()
    by_copy, by_executemany = _stage(pg_url, source, "run-1"), _stage(lite, source, "run-1")
    assert by_copy.as_dict() == by_executemany.as_dict()
    assert _balanced(by_copy) and by_copy.loaded > 500
    assert by_copy.excluded["duplicate resource id"] == 6 and by_copy.quarantined["invalid Observation"] == 2
    assert by_copy.quarantined["belongs to a quarantined Patient"] == 1
    assert by_copy.quarantined["reference to a patient not in the source"] == 2
    staged = _staging(pg_url)
    assert staged == _staging(lite)
    rows = {(r[0], r[1]): r for r in staged if r[0] != "quarantine"}
    newer = json.loads((source / "Observation.001.ndjson").read_text().splitlines()[0])
    assert json.loads(rows[("Observation", newer["id"])][7])["valueBoolean"] is False   # the newer copy won
    assert json.loads(rows[("Observation", "twice")][7])["status"] == "corrected"        # the newest copy won
    latest = json.loads(gzip.open(source / "Observation.ndjson.gz", "rt").read())
    assert json.loads(rows[("Observation", latest["id"])][7])["note"] == [{"text": "latest"}]
    # A first-pass resource is quarantined after the cohort is known, from the spool: same text as any other.
    orphan = (source / "Condition.001.ndjson").read_text().strip()
    quarantined = {r[1]: r for r in staged if r[0] == "quarantine"}["Condition.001.ndjson:1"]
    assert quarantined[4] == deidentified_text(orphan, Pseudonymizer(KEY)) and "Ann Smith" not in quarantined[4]


def test_restaging_changed_and_deleted_input_equals_a_fresh_stage(cohort_factory, tmp_path, registry_factory,
                                                                   small_batches):
    original = _varied_source(cohort_factory, tmp_path)
    final = tmp_path / "final"
    counts = change_and_delete(original, final, seed=2, share=0.03)
    for extra in ("Observation.001.ndjson", "Observation.ndjson.gz", "Patient.001.ndjson", "Practitioner.ndjson",
                  "Condition.001.ndjson"):
        shutil.copy(original / extra, final / extra)
    assert counts["changed"] > 10 and counts["deleted"] > 10
    restaged, fresh = registry_factory(), registry_factory()
    first = _stage(restaged, original, "run-1")
    staged_first = _staging(restaged)
    again = _stage(restaged, original, "run-2")
    # Two Observations have a newer copy read after their original: the original, read first, replaces the
    # staged row (counted as changed) and the newer copy puts it back (a duplicate). The rest is unchanged,
    # and so is staging.
    assert again.changes["new"] == 0 and again.changes["changed"] == 2
    assert again.changes["unchanged"] == first.loaded - 2
    assert [r for r in _staging(restaged) if r[0] != "quarantine"] == [r for r in staged_first if r[0] != "quarantine"]
    second = _stage(restaged, final, "run-3")
    assert _balanced(second)
    assert second.changes["changed"] > 0 and second.changes["deleted"] > 0
    from_scratch = _stage(fresh, final, "run-3")
    assert second.loaded == from_scratch.loaded and second.quarantined == from_scratch.quarantined
    assert second.excluded == from_scratch.excluded
    # An unchanged row keeps the source and time it was fetched from; everything else is as if staged afresh.
    content = [c for c in COMPARED if c != "source"]
    assert _staging(restaged, content, "run-3") == _staging(fresh, content, "run-3")


@pytest.mark.parametrize("delta", [False, True], ids=["snapshot", "changes-only"])
def test_stage_does_not_hold_the_bodies_in_memory(tmp_path, monkeypatch, delta):
    """40 MB of Conditions (read in the first pass, before the cohort is known) and of Observations: the
    stage's Python memory peak stays far below it, also for changes only, whose staged keys are asked for
    a block of resources at a time (a block is bounded by its characters too)."""
    monkeypatch.setattr(etl.stage, "BATCH_CHARS", 1_000_000)
    source = tmp_path / "big"
    source.mkdir()
    note = [{"text": "x" * 100_000}]
    patients, conditions, observations = [], [], []
    for p in range(100):
        patients.append({"resourceType": "Patient", "id": f"p{p}", "birthDate": "1960-01-01"})
        for c in range(2):
            conditions.append({"resourceType": "Condition", "id": f"c{p}-{c}", "subject": {"reference": f"Patient/p{p}"},
                               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "94381002"}]},
                               "note": note})
            observations.append({"resourceType": "Observation", "id": f"o{p}-{c}", "status": "final",
                                 "code": {"text": "size"}, "subject": {"reference": f"Patient/p{p}"}, "note": note})
    for name, resources in (("Patient", patients), ("Condition", conditions), ("Observation", observations)):
        (source / f"{name}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in resources))
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    open_registry(url).engine.dispose()
    tracemalloc.start()
    try:
        accounting = _stage(url, source, "run-1", delta)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert accounting.loaded == 500 and _balanced(accounting)
    assert peak < 15_000_000, f"peak {peak / 1e6:.1f} MB for 40 MB of resources"
