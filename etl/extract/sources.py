"""Choose and open a source from the `--source` value: a path (NDJSON/Bundle files), or a FHIR base URL
read by REST search (default) or Bulk Data `$export`.

Incremental pulls resume from the watermarks the last successful stage saved for the same source
(`state`); `full=True` ignores them and pulls a full snapshot.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from etl.extract.auth import auth_from_env
from etl.extract.bulk import BulkSource
from etl.extract.files import FileSource
from etl.extract.http import FhirHttp
from etl.extract.rest import RestSource


@dataclass(frozen=True)
class ServerOptions:
    """How to read a FHIR server (CLI flags / DAG params; secrets stay in the environment)."""

    mode: str = "rest"                  # rest | bulk
    bulk_level: str = "system"          # system | patient | group
    group_id: str | None = None
    full: bool = False                  # ignore watermarks: pull everything (a snapshot)
    page_size: int = 200
    overlap_seconds: float = 300.0      # re-read this much before the watermark (clock skew, late commits)
    ca_bundle: str | None = None        # else DLMREG_FHIR_CA_BUNDLE, else the system trust store
    delta: bool = False                 # files: changes only (e.g. a saved `_since` export), not a snapshot


def is_server(location: str) -> bool:
    return bool(re.match(r"^https?://", location))


def open_source(location: str, types: tuple[str, ...], options: ServerOptions = ServerOptions(),
                load_state: Callable[[str], dict[str, str]] = lambda key: {}):
    """A FileSource, RestSource or BulkSource for `location`; the caller closes it (if it has close())."""
    if not is_server(location):
        return FileSource(Path(location), delta=options.delta)
    verify = options.ca_bundle or os.environ.get("DLMREG_FHIR_CA_BUNDLE") or True
    http = FhirHttp(location, auth_from_env(), verify=verify)
    if options.mode == "bulk":
        def make(since):
            return BulkSource(location, http, types, level=options.bulk_level, group_id=options.group_id, since=since)
        state = {} if options.full else load_state(make(None).describe())
        return make(state.get("_bulk"))
    if options.mode != "rest":
        raise ValueError(f"unknown extraction mode {options.mode!r} (rest or bulk)")

    def make_rest(since):
        return RestSource(location, http, types, page_size=options.page_size, since=since,
                          overlap_seconds=options.overlap_seconds)
    # The source's key (its describe()) does not depend on the watermarks it is given.
    state = {} if options.full else load_state(make_rest(None).describe())
    return make_rest(state or None)
