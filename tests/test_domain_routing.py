"""The OMOP table follows the mapped concept's domain (HL7 FHIR-to-OMOP IG), not the resource type."""
from __future__ import annotations

import csv
import json
import shutil

import sqlalchemy as sa

from etl.pipeline import RunSettings, run
from etl.registry import open_registry
from etl.vocabulary import CODE_COLUMNS


def test_codes_are_routed_by_domain(cohort_factory, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(cohort_factory(10, 2), source)
    patient = json.loads((source / "Patient.ndjson").read_text().splitlines()[0])["id"]
    extra = [
        {"resourceType": "Condition", "id": "smoker", "subject": {"reference": f"Patient/{patient}"},
         "code": {"coding": [{"system": "urn:site:codes", "code": "SMOKER"}]}, "onsetDateTime": "2019-01-01"},
        {"resourceType": "Condition", "id": "unmapped", "subject": {"reference": f"Patient/{patient}"},
         "code": {"coding": [{"system": "urn:site:codes", "code": "XYZ"}]}, "onsetDateTime": "2019-01-01"},
    ]
    with (source / "Condition.ndjson").open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in extra))
    procedure = {"resourceType": "Procedure", "id": "ecog", "status": "completed",
                 "subject": {"reference": f"Patient/{patient}"},
                 "code": {"coding": [{"system": "urn:site:codes", "code": "ECOG"}]}, "performedDateTime": "2019-02-01"}
    with (source / "Procedure.ndjson").open("a") as handle:
        handle.write(json.dumps(procedure) + "\n")
    site = tmp_path / "site"
    site.mkdir()
    with (site / "site.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CODE_COLUMNS)
        writer.writeheader()
        for code, domain in (("SMOKER", "Observation"), ("ECOG", "Measurement")):
            writer.writerow({"source_system": "urn:site:codes", "source_code": code, "source_display": code,
                             "registry_meaning": code.lower(), "domain_id": domain, "target_concept_id": "0",
                             "target_vocabulary_id": "", "provenance": "site code list (test)"})
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    run(RunSettings(source=str(source), registry_url=url, out_dir=tmp_path / "o", mapping_dirs=(site,),
                    show_progress=False))
    registry = open_registry(url)
    t = registry.tables
    with registry.engine.connect() as conn:
        def values(table, column):
            return {r[0] for r in conn.execute(sa.select(t[table].c[column]))}
        assert "SMOKER" in values("observation", "observation_source_value")
        assert "SMOKER" not in values("condition_occurrence", "condition_source_value")
        assert "ECOG" in values("measurement", "measurement_source_value")
        assert "ECOG" not in values("procedure_occurrence", "procedure_source_value")
        assert "XYZ" in values("condition_occurrence", "condition_source_value")  # unmapped: default table
