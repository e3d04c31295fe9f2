"""Acceptance: running `dlmreg run` twice into the same registry gives identical rows and results."""
from __future__ import annotations

import json

import sqlalchemy as sa

from etl.load import REPLACED_TABLES
from etl.pipeline import RunSettings, run
from etl.registry import open_registry

RUN_SPECIFIC = {"run_id", "started_at", "finished_at", "staging_changes", "seconds", "peak_rss_mib"}


def _snapshot(url: str) -> dict[str, list]:
    registry = open_registry(url)
    tables = list(REPLACED_TABLES) + ["dlm_lesion_outcome", "dlm_patient_course", "dlm_lineage", "fhir_resource"]
    with registry.engine.connect() as conn:
        return {name: sorted(map(tuple, conn.execute(sa.select(registry.tables[name])).all()), key=repr)
                for name in tables if name != "cdm_source"}


def test_second_run_changes_nothing(cohort_factory, tmp_path, registry_url):
    source = cohort_factory(40, 7)
    settings = RunSettings(source=str(source), registry_url=registry_url, out_dir=tmp_path / "a", show_progress=False)
    first = run(settings)
    rows_first = _snapshot(registry_url)
    settings.out_dir = tmp_path / "b"
    second = run(settings)
    assert _snapshot(registry_url) == rows_first
    strip = lambda r: {**r, "run": {k: v for k, v in r["run"].items() if k not in RUN_SPECIFIC}}  # noqa: E731
    assert json.dumps(strip(first), sort_keys=True, default=str) == json.dumps(strip(second), sort_keys=True, default=str)
    assert first["run"]["run_id"] != second["run"]["run_id"]
    loaded = first["run"]["loaded"]
    assert first["run"]["staging_changes"] == {"new": loaded, "changed": 0, "unchanged": 0, "deleted": 0}
    assert second["run"]["staging_changes"] == {"new": 0, "changed": 0, "unchanged": loaded, "deleted": 0}
    assert rows_first["person"], "the registry must not be empty"
