"""cdm_source documents the load: source, FHIR version, vocabulary (mapping) version, ETL version."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from etl.pipeline import RunSettings, run
from etl.registry import open_registry


@pytest.fixture(scope="module")
def loaded(cohort_factory, tmp_path_factory):
    """One run of a small cohort at a site named Test Hospital: (registry URL, results)."""
    directory = tmp_path_factory.mktemp("cdm_source")
    url = f"sqlite:///{directory / 'r.sqlite'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DLMREG_SITE_NAME", "Test Hospital")
        results = run(RunSettings(source=str(cohort_factory(10, 1)), registry_url=url, out_dir=directory / "o",
                                  show_progress=False))
    return url, results


def test_cdm_source_is_filled(loaded):
    url, _ = loaded
    registry = open_registry(url)
    with registry.engine.connect() as conn:
        rows = conn.execute(sa.select(registry.tables["cdm_source"])).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert row["cdm_version"] == "v5.4" and row["cdm_holder"] == "Test Hospital"
    assert "FHIR R4" in row["source_description"] and "R4B" in row["source_description"]
    assert row["vocabulary_version"].startswith("dlmreg ") and len(row["vocabulary_version"]) <= 20
    assert row["cdm_etl_reference"].startswith("dlm-registry ")


def test_verified_concept_subset_is_loaded(loaded):
    import csv

    import mappings

    url, results = loaded
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
