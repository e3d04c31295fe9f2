"""A private PostgreSQL cluster for the benchmark, started the way scripts/test.sh starts the tests' one:
Debian's binaries under /usr/lib/postgresql/*/bin, `initdb -A trust`, listening on 127.0.0.1 only, the
socket in the cluster's own directory. initdb refuses to run as root, so as root every command runs as
the `postgres` user (`su postgres -s /bin/sh -c`). The cluster keeps PostgreSQL's default settings
(fsync on, shared_buffers as initdb chose), so commits cost what they cost on a stock server.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def pg_bin() -> Path | None:
    """The newest Debian PostgreSQL bin directory, or None when PostgreSQL is not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)] or [0])
    return found[-1] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """`with PrivateCluster() as cluster:` ... `cluster.url` is a SQLAlchemy URL of its `postgres` database.

    Stopped (`pg_ctl -m fast`) and its directory removed on exit.
    """

    def __init__(self, port: int | None = None, bin_dir: Path | None = None):
        self.bin = bin_dir or pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin "
                               "(install Debian's `postgresql` package or pass --pg-url)")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dlmreg-bench-pg-"))
        self.as_postgres = os.geteuid() == 0
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, command: str) -> None:
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", command] if self.as_postgres else ["sh", "-c", command]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"failed: {command}\n{done.stderr[-2000:]}\n{tail}")

    def __enter__(self) -> "PrivateCluster":
        if self.as_postgres:
            shutil.chown(self.dir, user="postgres")
        data, b = shlex.quote(str(self.dir / "data")), self.bin
        self._run(f"{b}/initdb -D {data} -A trust -U postgres >/dev/null")
        options = shlex.quote(f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}")
        try:
            self._run(f"{b}/pg_ctl -D {data} -o {options} -l {shlex.quote(str(self.dir / 'log'))} -w start >/dev/null")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._run(f"{self.bin}/pg_ctl -D {shlex.quote(str(self.dir / 'data'))} -m fast -w stop >/dev/null")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq connection string (for psycopg.connect)."""
    import sqlalchemy as sa

    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def fresh_database(server_url: str, prefix: str = "bench") -> str:
    """CREATE DATABASE on the server of `server_url`; returns the SQLAlchemy URL of the new, empty database."""
    import sqlalchemy as sa

    url = sa.engine.make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, database_url: str) -> None:
    """DROP DATABASE (WITH FORCE) for a database made by fresh_database; frees the disk between sizes."""
    import sqlalchemy as sa

    url = sa.engine.make_url(database_url)
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def server_version(server_url: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SHOW server_version")).scalar())
    finally:
        engine.dispose()
