"""Write-audit-publish: a load that fails a critical check is rolled back. The registry keeps what it
published before, the failed checks are stored for trends, and the run is recorded as failed."""
from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa

from etl.pipeline import RunFailed, RunSettings, run
from etl.registry import open_registry
from tests.registry_compare import canonical_registry


def _corrupt(source, target):
    """Plant a critical defect: the same lesion identity twice for one patient."""
    shutil.copytree(source, target)
    lines = (target / "BodyStructure.ndjson").read_text().splitlines()
    twin = json.loads(lines[0]) | {"id": "duplicated-lesion"}
    (target / "BodyStructure.ndjson").write_text("\n".join(lines + [json.dumps(twin)]) + "\n")


def test_failed_audit_leaves_the_published_registry(cohort_factory, tmp_path, registry_factory):
    clean = cohort_factory(20, 4)
    url = registry_factory()
    run(RunSettings(source=str(clean), registry_url=url, out_dir=tmp_path / "good", show_progress=False))
    published = canonical_registry(url)
    _corrupt(clean, tmp_path / "corrupt")
    with pytest.raises(RunFailed, match="DLM4:lesion_identity_unique"):
        run(RunSettings(source=str(tmp_path / "corrupt"), registry_url=url, out_dir=tmp_path / "bad",
                        show_progress=False))
    after = canonical_registry(url)
    for table in published:
        if table != "fhir_resource":  # staging holds what arrived; the published tables must not move
            assert after[table] == published[table], table
    registry = open_registry(url)
    t = registry.tables
    with registry.engine.connect() as conn:
        runs = dict(conn.execute(sa.select(t["dlm_run"].c.run_id, t["dlm_run"].c.status)).all())
        failed_checks = conn.execute(sa.select(t["dlm_quality_result"].c.check_name).where(
            t["dlm_quality_result"].c.status == "fail", t["dlm_quality_result"].c.severity == "critical")).all()
    assert sorted(runs.values()) == ["failed", "published"]
    assert sorted(row[0] for row in failed_checks) == ["DLM4:lesion_identity_unique",
                                                       "DLM7:baseline_before_chemotherapy"]


def test_first_load_failing_its_audit_publishes_nothing(cohort_factory, tmp_path):
    _corrupt(cohort_factory(20, 4), tmp_path / "corrupt")
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    with pytest.raises(RunFailed):
        run(RunSettings(source=str(tmp_path / "corrupt"), registry_url=url, out_dir=tmp_path / "o",
                        show_progress=False))
    registry = open_registry(url)
    with registry.engine.connect() as conn:
        for table in ("person", "dlm_lesion", "dlm_lesion_outcome", "dlm_patient_course"):
            assert conn.execute(sa.select(sa.func.count()).select_from(registry.tables[table])).scalar() == 0
