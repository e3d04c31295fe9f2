"""One writer per registry (etl/run_lock.py): a second run is refused at once, before writing anything,
and a killed holder never leaves a stale lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from etl.cli import EXIT_REGISTRY_BUSY, main
from etl.run_lock import RegistryBusy, registry_lock
from tests.conftest import REPO

# Holds the lock for 10 minutes; retries for 10 s while a killed holder's session is still ending.
HOLD = ("import sys, time; from etl.run_lock import RegistryBusy, registry_lock\n"
        "for attempt in range(50):\n"
        "    try:\n"
        "        with registry_lock(sys.argv[1], shared=sys.argv[2] == 'shared'):\n"
        "            print('held', flush=True); time.sleep(600)\n"
        "    except RegistryBusy:\n"
        "        time.sleep(0.2)\n")


def _runs(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            schema = "dlm" if engine.dialect.name == "postgresql" else None
            if not inspector.has_table("dlm_run", schema=schema):
                return 0
            table = sa.table("dlm_run", schema=schema)
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    finally:
        engine.dispose()


def _holder(url: str, mode: str = "exclusive") -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url, mode], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_is_refused_while_another_holds_the_registry(cohort_factory, registry_url, tmp_path, capsys):
    source = str(cohort_factory(8, 2))
    holder = _holder(registry_url)
    try:
        code = main(["run", "--source", source, "--registry", registry_url, "--out", str(tmp_path / "a"),
                     "--no-progress"])
        assert code == EXIT_REGISTRY_BUSY
        assert "another run is writing to this registry" in capsys.readouterr().err
        assert _runs(registry_url) == 0   # refused before anything was written
        with pytest.raises(RegistryBusy), registry_lock(registry_url):
            pass
    finally:
        holder.kill()
        holder.wait()
    with registry_lock(registry_url):  # free again for the next run
        pass


def test_kill_9_of_the_holder_releases_the_lock(registry_url):
    holder = _holder(registry_url)
    with pytest.raises(RegistryBusy), registry_lock(registry_url):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10   # PostgreSQL ends the dead session's lock when it notices the socket
    while True:
        try:
            with registry_lock(registry_url):
                break
        except RegistryBusy:
            assert time.monotonic() < deadline, "lock still held 10 s after the holder was killed"
            time.sleep(0.2)


def test_the_lock_is_reentrant_across_sequential_runs_in_one_process(registry_url):
    for _ in range(2):
        with registry_lock(registry_url):
            pass


def test_partitions_share_the_lock_and_exclude_whole_runs(registry_url):
    """A scale-out partition holds the lock shared: its siblings may write, a whole run may not (and the
    partitions may not start while a whole run writes)."""
    partition = _holder(registry_url, "shared")
    try:
        with registry_lock(registry_url, shared=True):   # a sibling partition
            pass
        with pytest.raises(RegistryBusy), registry_lock(registry_url):
            pass
    finally:
        partition.kill()
        partition.wait()
    whole = _holder(registry_url)
    try:
        with pytest.raises(RegistryBusy), registry_lock(registry_url, shared=True):
            pass
    finally:
        whole.kill()
        whole.wait()
