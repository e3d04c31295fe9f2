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


def test_verified_concept_subset_is_loaded(cohort_factory, tmp_path):
    import csv

    import mappings

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    results = run(RunSettings(source=str(cohort_factory(10, 1)), registry_url=url, out_dir=tmp_path / "o",
                              show_progress=False))
    registry = open_registry(url)
    with registry.engine.connect() as conn:
        concepts = {r["concept_id"]: r for r in conn.execute(sa.select(registry.tables["concept"])).mappings()}
        genders = {r[0] for r in conn.execute(sa.select(registry.tables["person"].c.gender_concept_id))}
    rows = list(csv.DictReader((mappings.DIRECTORY / "concepts.csv").open()))
    complete = [r for r in rows if r["concept_class_id"] and r["domain_id"] and r["vocabulary_id"] and r["concept_code"]]
    assert set(concepts) == {int(r["concept_id"]) for r in complete}
    assert concepts[0]["concept_name"] == "No matching concept"
    assert genders <= set(concepts)  # every gender concept used resolves to a concept row
    skipped = len(rows) - len(complete)
    assert results["run"]["warnings"]["concepts.csv rows not loaded (required fields not verified)"] == skipped
    assert all(r["provenance"] for r in rows)
