"""Issue #9: report texts read ahead in worker processes (etl.nlp.reader) give exactly the findings read in
the main process, and mapping with workers gives the registry mapping without them gives."""
from __future__ import annotations

import datetime as dt
import json
import os
import signal

import pytest

from etl.nlp import extract
from etl.nlp.reader import ReportReader
from etl.pipeline import load_patients, stage
from etl.registry import open_registry
from etl.vocabulary import load_code_map
from etl.workers import default_workers, usable_workers
from tests.conftest import REPO
from tests.registry_compare import assert_same_registry

TODAY = dt.date(2026, 1, 15)


@pytest.fixture(scope="module")
def corpus_jobs() -> list[tuple[str, str, str]]:
    """The annotated corpus's reports (English and Japanese, every kind) as reader jobs."""
    jobs = []
    for lang in ("en", "ja"):
        for line in (REPO / "tests" / "nlp_corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
            report = json.loads(line)
            jobs.append((report["text"], report["kind"], report["lang"]))
    return jobs


def test_read_ahead_gives_what_extract_gives(corpus_jobs):
    ahead, later = corpus_jobs[:-20], corpus_jobs[-20:]
    with ReportReader(workers=2, min_texts=1, chunk_texts=7) as reader:
        token = reader.read_ahead(ahead + ahead[:5])   # a text asked twice is read once
        assert token is not None
        for job in ahead + later:
            assert reader.extract(*job) == extract(*job)
        assert (reader.read_in_workers, reader.read_here) == (len(ahead), len(later))
        reader.release(token)
        reader.extract(*ahead[0])   # released: read again, here
        assert reader.read_here == len(later) + 1
    assert reader._executor is None


def test_a_text_that_fails_fails_alone(corpus_jobs):
    """A text whose reading raises raises when asked for, as read here; the others of its chunk are read."""
    bad = (corpus_jobs[0][0], "no-such-kind", "en")
    with ReportReader(workers=1, min_texts=1, chunk_texts=10) as reader:
        reader.read_ahead([bad, *corpus_jobs[:5]])
        assert [reader.extract(*job) for job in corpus_jobs[:5]] == [extract(*job) for job in corpus_jobs[:5]]
        with pytest.raises(ValueError, match="unknown report kind"):
            reader.extract(*bad)
        assert reader.read_in_workers == 6


@pytest.mark.parametrize("workers, min_texts", [(0, 1), (2, 10_000)])
def test_no_workers_started_when_not_worth_it(corpus_jobs, workers, min_texts):
    with ReportReader(workers=workers, min_texts=min_texts) as reader:
        assert reader.read_ahead(corpus_jobs) is None
        assert reader._executor is None
        assert reader.extract(*corpus_jobs[0]) == extract(*corpus_jobs[0])
        assert reader.read_here == 1


def test_a_dead_worker_falls_back_to_the_main_process(corpus_jobs, caplog):
    with ReportReader(workers=2, min_texts=1, chunk_texts=len(corpus_jobs)) as reader:
        reader.read_ahead(corpus_jobs)
        # Killed while they start (a spawned worker imports the reader first): no answer can have come back.
        for pid in list(reader._executor._processes):
            os.kill(pid, signal.SIGKILL)
        with caplog.at_level("WARNING"):
            assert [reader.extract(*job) for job in corpus_jobs[:3]] == [extract(*job) for job in corpus_jobs[:3]]
        assert reader.read_in_workers == 0 and reader.read_here == 3
        assert reader.workers == 0 and reader._executor is None
        assert "worker process died" in caplog.text
        assert reader.read_ahead(corpus_jobs) is None


def test_no_workers_in_a_daemonic_process(monkeypatch):
    """A Celery pool process is daemonic and may not start processes: the steps then run in it."""
    import multiprocessing

    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)
    assert usable_workers(2) == 0 and ReportReader(2).workers == 0
    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", False)
    assert usable_workers(2) == 2


def test_workers_from_the_environment(monkeypatch):
    monkeypatch.setenv("DLMREG_WORKERS", "3")
    assert default_workers() == ReportReader().workers == 3
    monkeypatch.delenv("DLMREG_WORKERS")
    assert default_workers() >= 1
    for bad in ("two", "-1", "1.5"):
        monkeypatch.setenv("DLMREG_WORKERS", bad)
        with pytest.raises(ValueError, match="DLMREG_WORKERS"):
            default_workers()


def _load(url: str, source, **options) -> dict:
    registry = open_registry(url)
    stage(registry, str(source), load_code_map(), "run", show_progress=False)
    with registry.engine.begin() as conn:
        done = load_patients(conn, registry.tables, load_code_map(), "run", 24.0, TODAY, **options)
    registry.engine.dispose()
    return done


def test_mapping_with_workers_gives_the_same_registry(cohort_factory, tmp_path, monkeypatch):
    """Three batches, each read ahead while the one before is mapped, by two worker processes."""
    monkeypatch.setattr("etl.nlp.reader.MIN_TEXTS", 1)
    source = cohort_factory(24, 7)
    here, workers = f"sqlite:///{tmp_path / 'here.sqlite'}", f"sqlite:///{tmp_path / 'workers.sqlite'}"
    plain = _load(here, source, batch_size=9, workers=0)
    parallel = _load(workers, source, batch_size=9, workers=2)
    assert plain["texts_read_in_workers"] == 0
    assert parallel["texts_read_in_workers"] > 3 * 20   # about 14 report texts per patient
    assert_same_registry(here, workers)


@pytest.mark.parametrize("value", ["-1", "two"])
def test_cli_refuses_a_bad_worker_count(value, capsys):
    from etl.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["run", "--workers", value])
    assert exited.value.code == 2 and "--workers" in capsys.readouterr().err
