"""Issue #9: resources validated in worker processes (etl.stage.parse.parse_records) get the verdicts, and
come back in the order, that validating them in the run's own process gives, also when a worker dies; a
resource prepared for staging in a worker (etl.stage.prepare) is what the run's own process prepares."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
from functools import partial

import pytest

import etl.stage.parse
from etl.extract import FileSource, RawRecord
from etl.stage.parse import Rejected, parse_records
from etl.stage.prepare import Prepared, prepare
from etl.stage.pseudonym import Pseudonymizer


@pytest.fixture
def records(cohort_factory) -> list[RawRecord]:
    """A small cohort's records with faults of every kind the parser names, spread through the input."""
    source = FileSource(cohort_factory(6, 2))
    good = list(source.records())[:300]
    observation = json.loads(next(r.text for r in good if r.expected_type == "Observation"))
    faults = [RawRecord("{not json", "f:1", "Observation"),
              RawRecord("[1, 2]", "f:2", "Observation"),
              RawRecord(json.dumps({"id": "x"}), "f:3", "Observation"),
              RawRecord(json.dumps(observation | {"resourceType": "Condition"}), "f:4", "Observation"),
              RawRecord(json.dumps({k: v for k, v in observation.items() if k != "id"}), "f:5", "Observation"),
              RawRecord(json.dumps(observation | {"status": 42}), "f:6", "Observation"),
              RawRecord(json.dumps({"resourceType": "NotAType", "id": "n"}), "f:7", None),
              RawRecord("", "f:8", "!not UTF-8")]
    mixed = []
    for index, record in enumerate(good):
        mixed.append(record)
        if index % 37 == 0:
            mixed.append(faults[(index // 37) % len(faults)])
    return mixed


def test_workers_give_the_verdicts_in_order(records):
    here = list(parse_records(records, workers=0))
    assert sum(isinstance(p, Rejected) for _, p in here) >= 8
    in_workers = list(parse_records(records, workers=2, chunk=7))
    assert [r for r, _ in in_workers] == records
    assert in_workers == here


def test_a_small_input_starts_no_worker(records, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no worker process for one chunk")

    monkeypatch.setattr(etl.stage.parse, "process_pool", refuse)
    assert list(parse_records(records[:20], workers=2, chunk=20)) == list(parse_records(records[:20], workers=0))


def test_a_dead_worker_leaves_the_rest_to_the_main_process(records, caplog):
    here = list(parse_records(records, workers=0))
    parsed = parse_records(records, workers=2, chunk=5)
    out = [next(parsed)]
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGKILL)
    with caplog.at_level("WARNING"):
        out += list(parsed)
    assert out == here
    assert "validating worker process died" in caplog.text


def test_workers_prepare_what_the_main_process_prepares(records):
    # A key and a date shift of the run's own (not the environment's): the workers must use the same.
    pseudo = Pseudonymizer("a-test-key", date_shift_days=30)
    here = list(parse_records(records, workers=0, prepare=partial(prepare, pseudo=pseudo)))
    prepared = [p for _, p in here if isinstance(p, Prepared)]
    assert len(prepared) == sum(not isinstance(p, Rejected) for _, p in parse_records(records, workers=0))
    assert any(p.owner == pseudo.patient(json.loads(r.text)["subject"]["reference"].split("/")[-1])
               for r, p in here if isinstance(p, Prepared) and p.resource_type == "Observation")
    assert all("identifier" not in json.loads(p.clean) for p in prepared if p.resource_type != "BodyStructure")
    in_workers = list(parse_records(records, workers=2, chunk=7, prepare=partial(prepare, pseudo=pseudo)))
    assert in_workers == here
    other = list(parse_records(records, workers=2, chunk=7, prepare=partial(prepare, pseudo=Pseudonymizer("another-key"))))
    assert [p.owner for _, p in other if isinstance(p, Prepared)] != [p.owner for p in prepared]
