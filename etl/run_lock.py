"""One writer at a time per registry: a lock held for the whole of a run's writing steps.

Why: two runs staging and loading the same registry at once would interleave their deletes and inserts
(and their watermarks). PostgreSQL gets a session-level advisory lock; SQLite an exclusive `flock` on a
file next to the database. Both are released by the operating system or the server when the process
dies (kill -9 included), so a crashed run never leaves a stale lock behind.

The partitions of one scale-out run (etl.pipeline.map_partition, separate processes) write disjoint
patients at once: each holds the lock shared, which excludes every whole run (exclusive) but not its
sibling partitions.
"""
from __future__ import annotations

import fcntl
import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

log = logging.getLogger(__name__)
# Advisory lock keys are per database; one fixed key names "the registry writer".
LOCK_KEY = zlib.crc32(b"dlmreg registry writer")


class RegistryBusy(RuntimeError):
    """Another run holds the registry's lock."""


@contextmanager
def registry_lock(url: str, shared: bool = False) -> Iterator[None]:
    """Hold the registry's writer lock (`shared`: a partition's); raise RegistryBusy at once when another
    process holds it in a mode that excludes this one."""
    engine = sa.create_engine(url)
    suffix = "_shared" if shared else ""
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                if not conn.execute(sa.text(f"SELECT pg_try_advisory_lock{suffix}(:k)"), {"k": LOCK_KEY}).scalar():
                    raise RegistryBusy("another run is writing to this registry (PostgreSQL advisory lock held); "
                                       "try again when it has finished")
                conn.commit()
                try:
                    yield
                finally:
                    try:
                        conn.execute(sa.text(f"SELECT pg_advisory_unlock{suffix}(:k)"), {"k": LOCK_KEY})
                        conn.commit()
                    except sa.exc.DBAPIError:
                        # the session is gone (database restarted or connection dropped): so is its lock
                        log.warning("run lock: the database connection was lost; the lock went with it")
        elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            path = Path(engine.url.database).with_name(Path(engine.url.database).name + ".lock")
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                try:
                    fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RegistryBusy(f"another run is writing to this registry ({path.name} is locked); "
                                       "try again when it has finished") from None
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        else:
            log.warning("no run lock for %s databases: do not start two runs at once", engine.dialect.name)
            yield
    finally:
        engine.dispose()
