"""cdm_source documents the load: source, FHIR version, vocabulary (mapping) version, ETL version."""
from __future__ import annotations

import sqlalchemy as sa

from etl.pipeline import RunSettings, run
from etl.registry import open_registry


def test_cdm_source_is_filled(cohort_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("DLMREG_SITE_NAME", "Test Hospital")
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    run(RunSettings(source=str(cohort_factory(10, 1)), registry_url=url, out_dir=tmp_path / "o", show_progress=False))
    registry = open_registry(url)
    with registry.engine.connect() as conn:
        rows = conn.execute(sa.select(registry.tables["cdm_source"])).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert row["cdm_version"] == "v5.4" and row["cdm_holder"] == "Test Hospital"
    assert "FHIR R4" in row["source_description"] and "R4B" in row["source_description"]
    assert row["vocabulary_version"].startswith("dlmreg ") and len(row["vocabulary_version"]) <= 20
    assert row["cdm_etl_reference"].startswith("dlm-registry ")
