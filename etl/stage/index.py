"""The stage's per-resource index, kept in a private temporary SQLite file so memory does not grow with the input.

For every staging key (resource type, resource id) it holds the hash staged, and, once the key is seen in
this run, the `lastUpdated` of the copy kept. Stage uses it to skip unchanged resources, to keep the newer
of two copies of one resource in one input, and to find what a snapshot no longer holds (deletions).

An in-process dict cost about 250 bytes per resource (1.1 GiB at 3.5 million resources). Here a lookup
and a mark are two statements on an indexed table (about 10 microseconds together); the file is
deleted when the index is closed, and SQLite's page cache is capped (`CACHE_KIB`).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

Key = tuple[str, str]
CACHE_KIB = 32 * 1024


def _b(text: str) -> bytes:
    """Ids and dates as UTF-8 bytes; a lone surrogate (from a JSON escape) survives the round trip."""
    return text.encode("utf-8", "surrogatepass")


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


class StagingIndex:
    """Staged hashes and this run's sightings, by staging key. Not thread-safe; one per stage."""

    def __init__(self):
        # "" opens a private temporary on-disk database, removed when it is closed.
        self._db = sqlite3.connect("", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                       f"cache_size=-{CACHE_KIB}"):
            self._db.execute(f"PRAGMA {pragma}")
        # last_updated NULL: staged before, not (yet) seen in this run.
        self._db.execute("CREATE TABLE idx (resource_type BLOB NOT NULL, resource_id BLOB NOT NULL, "
                         "digest BLOB NOT NULL, last_updated BLOB, PRIMARY KEY (resource_type, resource_id))"
                         " WITHOUT ROWID")
        self._db.execute("BEGIN")

    def load(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """(resource_type, resource_id, sha256 hex) of what is staged; a key already in the index is kept as is."""
        self._db.executemany("INSERT OR IGNORE INTO idx VALUES (?, ?, ?, NULL)",
                             ((_b(t), _b(i), bytes.fromhex(sha)) for t, i, sha in rows))

    def lookup(self, key: Key) -> tuple[bytes | None, str | None]:
        """(hash staged or kept in this run, or None if unknown; lastUpdated of the copy kept in this run,
        "" if it had none, or None if the key was not seen in this run)."""
        row = self._db.execute("SELECT digest, last_updated FROM idx WHERE resource_type = ? AND resource_id = ?",
                               (_b(key[0]), _b(key[1]))).fetchone()
        if row is None:
            return None, None
        return row[0], None if row[1] is None else _s(row[1])

    def mark(self, key: Key, digest: bytes, last_updated: str) -> None:
        """The key was seen in this run; `digest` and `last_updated` are those of the copy kept."""
        self._db.execute("INSERT OR REPLACE INTO idx VALUES (?, ?, ?, ?)",
                         (_b(key[0]), _b(key[1]), digest, _b(last_updated)))

    def unseen_batches(self, size: int) -> Iterator[list[Key]]:
        """Keys staged before and not seen in this run, in key order, `size` at a time. The caller may
        `drop` each batch before asking for the next."""
        after = (b"", b"")
        while True:
            batch = self._db.execute(
                "SELECT resource_type, resource_id FROM idx WHERE last_updated IS NULL "
                "AND (resource_type, resource_id) > (?, ?) ORDER BY resource_type, resource_id LIMIT ?",
                (*after, size)).fetchall()
            if not batch:
                return
            after = batch[-1]
            yield [(_s(t), _s(i)) for t, i in batch]

    def drop(self, keys: Iterable[Key]) -> None:
        self._db.executemany("DELETE FROM idx WHERE resource_type = ? AND resource_id = ?",
                             ((_b(t), _b(i)) for t, i in keys))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StagingIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
