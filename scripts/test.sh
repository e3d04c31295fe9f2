#!/usr/bin/env bash
# Run the test suite against SQLite and a real PostgreSQL.
# If DLMREG_TEST_PG_URL is not set, start a private PostgreSQL 15 cluster on a loopback port for the
# duration of the run (Debian's `postgresql` package; installed here if missing and we are root).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if [ -z "${DLMREG_TEST_PG_URL:-}" ]; then
  PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$PGBIN" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing PostgreSQL from Debian packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  if [ -n "$PGBIN" ]; then
    PGDIR="$(mktemp -d /tmp/dlmreg-pg.XXXXXX)"
    PGPORT="${DLMREG_TEST_PG_PORT:-55432}"
    RUNAS=()
    if [ "$(id -u)" = "0" ]; then chown postgres "$PGDIR"; RUNAS=(su postgres -s /bin/sh -c); fi
    run() { if [ ${#RUNAS[@]} -gt 0 ]; then "${RUNAS[@]}" "$*"; else sh -c "$*"; fi; }
    run "$PGBIN/initdb -D $PGDIR/data -A trust -U postgres >/dev/null"
    # A throwaway cluster: no waiting for the disk on commit (a crash loses only this test run's databases).
    run "$PGBIN/pg_ctl -D $PGDIR/data -o '-p $PGPORT -c listen_addresses=127.0.0.1 -k $PGDIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off' -l $PGDIR/log -w start >/dev/null"
    trap 'run "$PGBIN/pg_ctl -D $PGDIR/data -m fast -w stop >/dev/null" || true; rm -rf "$PGDIR"' EXIT
    export DLMREG_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
    echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT"
  else
    echo "PostgreSQL not available: PostgreSQL tests will be skipped" >&2
  fi
fi
if [ $# -eq 0 ]; then
  # The whole suite: one pytest-xdist worker per core (at most 4), each test module on one worker (module
  # fixtures are built once); the slowest tests are listed at the end.
  workers="${DLMREG_TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}"
  [ "$workers" -gt 4 ] && workers=4
  set -- -n "$workers" --dist loadfile --durations=20
fi
"$PYTHON" -m pytest "$@"
