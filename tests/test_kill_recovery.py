"""Acceptance: a load killed halfway (SIGKILL, no chance to clean up) and re-run ends with no duplicates
and no missing rows: the same registry as an uninterrupted load.

Kill points are placed in the middle of each stage (staging, map/load/derive, quality checks), timed
from the log of an uninterrupted run of the same input.
"""
from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
import time

import sqlalchemy as sa

from tests.registry_compare import assert_same_registry

STAGES = ("stage: reading", "map/load/derive", "quality checks", "analysis")


def _command(source, url, out) -> list[str]:
    return [sys.executable, "-m", "etl.cli", "run", "--source", str(source), "--registry", url, "--out", str(out),
            "--no-progress"]


def _stage_offsets(stderr: str, started: dt.datetime) -> list[float]:
    """Seconds from process start to the start of each stage, from the log's timestamps."""
    offsets = []
    for marker in STAGES:
        line = next(line for line in stderr.splitlines() if marker in line)
        stamp = dt.datetime.strptime(re.match(r"^(\S+ \S+)", line).group(1), "%Y-%m-%d %H:%M:%S,%f")
        offsets.append((stamp - started).total_seconds())
    return offsets


def _run_statuses(url: str) -> list[str]:
    engine = sa.create_engine(url)
    table = "dlm.dlm_run" if engine.dialect.name == "postgresql" else "dlm_run"
    with engine.connect() as conn:
        statuses = [row[0] for row in conn.execute(sa.text(f"SELECT status FROM {table}"))]
    engine.dispose()
    return statuses


def test_killed_loads_recover(cohort_factory, tmp_path, registry_factory):
    source = cohort_factory(40, 13)
    reference = registry_factory()
    started = dt.datetime.now()
    completed = subprocess.run(_command(source, reference, tmp_path / "ref"), capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    offsets = _stage_offsets(completed.stderr, started)
    kill_points = [(a + b) / 2 for a, b in zip(offsets, offsets[1:])]
    for number, kill_after in enumerate(kill_points):
        url = registry_factory()
        process = subprocess.Popen(_command(source, url, tmp_path / f"killed{number}"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "the run ended before the kill point"
        assert _run_statuses(url) == ["running"]
        rerun = subprocess.run(_command(source, url, tmp_path / f"rerun{number}"), capture_output=True, text=True,
                               timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert_same_registry(url, reference)
        assert sorted(_run_statuses(url)) == ["published", "running"]
