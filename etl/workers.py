"""How many worker processes a run uses, and how they are started.

The CPU-heavy pure steps (validating staged resources, reading report texts) run in worker processes
beside the run's own process: `--workers` / `DLMREG_WORKERS`, by default one per CPU, 0 for none.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)
WORKERS_ENV = "DLMREG_WORKERS"


def parse_workers(value: str) -> int:
    """A worker count as given (`--workers`, `DLMREG_WORKERS`); ValueError unless a whole number >= 0."""
    try:
        workers = int(value)
    except ValueError:
        raise ValueError(f"expected a whole number of worker processes, got {value!r}") from None
    if workers < 0:
        raise ValueError(f"expected 0 or more worker processes, got {value}")
    return workers


def default_workers() -> int:
    """`DLMREG_WORKERS` if set, else the number of CPUs this process may use."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if value:
        try:
            return parse_workers(value)
        except ValueError as exc:
            raise ValueError(f"{WORKERS_ENV}: {exc}") from None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def usable_workers(workers: int | None = None) -> int:
    """`workers` (default: default_workers()), or 0 in a daemonic process, which may not start processes of
    its own (a Celery pool process, for one): the step then runs in the run's own process."""
    workers = default_workers() if workers is None else workers
    if workers and multiprocessing.current_process().daemon:
        log.info("running in a daemonic process: no worker processes")
        return 0
    return workers


def process_pool(workers: int, initializer=None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """`workers` processes, spawned, not forked: the run's process may hold database connections and
    threads (Airflow), which a forked child must not inherit."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)
