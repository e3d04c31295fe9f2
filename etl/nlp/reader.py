"""Read report texts ahead of mapping, in worker processes.

The report-text reader (`etl.nlp.extract`) is about half of mapping's CPU time, and it is a pure function
of (text, kind, language). So while the main process maps one batch of patients, worker processes read
the report texts of the next batch (`read_ahead`); mapping then asks `ReportReader.extract`, which returns
the worker's answer when one was read ahead and reads the text itself otherwise. The answer is the one
`etl.nlp.extract` gives either way: read-ahead only decides where the work is done.

With no `workers`, or fewer than `min_texts` texts ahead, nothing is started and every text is read in
the main process. If a worker process dies (killed, out of memory), the reader says so in the log and
reads every remaining text in the main process.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from etl.nlp import Mention, extract
from etl.workers import process_pool, usable_workers

log = logging.getLogger(__name__)
CHUNK_TEXTS = 200      # texts per task sent to a worker
MIN_TEXTS = 500        # fewer texts ahead than this are read in the main process (starting workers costs more)

Job = tuple[str, str, str]   # (text, kind, lang) as etl.nlp.extract takes them


def _extract_all(jobs: list[Job]) -> list[list[Mention] | Exception]:
    """In a worker: each job's mentions, or the exception reading it raised (for that job alone)."""
    out: list[list[Mention] | Exception] = []
    for job in jobs:
        try:
            out.append(extract(*job))
        except Exception as exc:  # raised again when mapping asks for this text, as reading it here would
            out.append(exc)
    return out


class ReportReader:
    """`extract` with read-ahead in `workers` processes (see the module docstring)."""

    def __init__(self, workers: int | None = None, min_texts: int | None = None, chunk_texts: int = CHUNK_TEXTS):
        self.workers = usable_workers(workers)
        self.min_texts = MIN_TEXTS if min_texts is None else min_texts
        self.chunk_texts = chunk_texts
        self._executor: ProcessPoolExecutor | None = None
        self._ahead: dict[int, dict[Job, tuple[Future, int]]] = {}   # by read-ahead token
        self._next_token = 0
        self.read_in_workers = 0    # texts whose answer came from a worker
        self.read_here = 0          # texts read in the main process

    @property
    def parallel(self) -> bool:
        """Whether texts read ahead go to worker processes (else read_ahead does nothing)."""
        return self.workers >= 1

    def read_ahead(self, jobs) -> int | None:
        """Start reading `jobs` (texts mapping will ask for) in the workers; returns a token for `release`,
        or None when they will be read in the main process instead."""
        if not self.parallel:
            return None
        unique = list(dict.fromkeys(jobs))
        if len(unique) < self.min_texts:
            return None
        try:
            executor = self._start()
            ahead: dict[Job, tuple[Future, int]] = {}
            for start in range(0, len(unique), self.chunk_texts):
                chunk = unique[start:start + self.chunk_texts]
                future = executor.submit(_extract_all, chunk)
                ahead.update((job, (future, index)) for index, job in enumerate(chunk))
        except BrokenProcessPool:
            self._broken()
            return None
        token, self._next_token = self._next_token, self._next_token + 1
        self._ahead[token] = ahead
        return token

    def extract(self, text: str, kind: str, lang: str = "auto") -> list[Mention]:
        """What etl.nlp.extract(text, kind, lang) returns: read ahead if it was, else read now."""
        job = (text, kind, lang)
        for ahead in self._ahead.values():
            if job in ahead:
                future, index = ahead[job]
                try:
                    found = future.result()[index]
                except BrokenProcessPool:
                    self._broken()
                    break
                self.read_in_workers += 1
                if isinstance(found, Exception):
                    raise found
                return found
        self.read_here += 1
        return extract(text, kind, lang)

    def release(self, token: int | None) -> None:
        """Forget the answers of one read-ahead (its batch is mapped); unread ones are cancelled."""
        for future, _ in (self._ahead.pop(token, None) or {}).values():
            future.cancel()

    def close(self) -> None:
        self._ahead.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ReportReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = process_pool(self.workers)
        return self._executor

    def _broken(self) -> None:
        log.warning("a report-reading worker process died; reading the remaining report texts in the main process")
        self._ahead.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.workers = 0
