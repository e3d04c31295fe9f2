"""Issue #9: resources validated in worker processes (etl.stage.parse.parse_records) get the verdicts, and
come back in the order, that validating them in the run's own process gives, also when a worker dies."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal

import pytest

import etl.stage.parse
from etl.extract import FileSource, RawRecord
from etl.stage.parse import Rejected, parse_records


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
