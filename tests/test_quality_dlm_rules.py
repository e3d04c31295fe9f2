"""DLM quality rules catch planted defects and pass the clean cohort; a corrupted cohort is not
published and every planted defect is named (issue: data quality, acceptance)."""
from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest

from etl.cli import main
from etl.pipeline import RunFailed, RunSettings, run


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path, resources):
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))


def _code(resource):
    return resource["code"]["coding"][0]["code"]


def plant_duplicate_lesion(directory):
    bodies = _lines(directory / "BodyStructure.ndjson")
    _write(directory / "BodyStructure.ndjson", bodies + [bodies[0] | {"id": "duplicated-lesion"}])


def plant_lesion_without_baseline(directory):
    """Remove every lesion-visible observation of one lesion before its first post-baseline date."""
    observations = _lines(directory / "Observation.ndjson")
    lesion = json.loads((directory / "BodyStructure.ndjson").read_text().splitlines()[0])["id"]
    mine = sorted((o for o in observations if _code(o) == "lesion-visible"
                   and o.get("focus", [{}])[0].get("reference") == f"BodyStructure/{lesion}"),
                  key=lambda o: o["effectiveDateTime"])
    baseline = {o["id"] for o in mine if o["effectiveDateTime"] == mine[0]["effectiveDateTime"]
                or o["effectiveDateTime"] <= mine[1]["effectiveDateTime"]}
    _write(directory / "Observation.ndjson", [o for o in observations if o["id"] not in baseline])
    # The baseline reports' text would still show the lesion (text fills in missing structured facts):
    # those reports lose their text too.
    dates = {o["effectiveDateTime"] for o in mine if o["id"] in baseline}
    patient = mine[0]["subject"]["reference"]
    reports = _lines(directory / "DiagnosticReport.ndjson")
    for report in reports:
        if report["subject"]["reference"] == patient and report.get("effectiveDateTime") in dates:
            report.pop("presentedForm", None)
            report.pop("conclusion", None)
    _write(directory / "DiagnosticReport.ndjson", reports)


def plant_pathology_before_surgery(directory):
    """Date one lesion's pathology finding a year before anything else happened (dates out of order)."""
    observations = _lines(directory / "Observation.ndjson")
    target = next(o for o in observations if _code(o) == "viable-tumor")
    day = dt.date.fromisoformat(target["effectiveDateTime"][:10]) - dt.timedelta(days=365)
    target["effectiveDateTime"] = day.isoformat()
    _write(directory / "Observation.ndjson", observations)


PLANTS = {
    "DLM4:lesion_identity_unique": plant_duplicate_lesion,
    "DLM7:baseline_before_chemotherapy": plant_lesion_without_baseline,
    "DLM11:pathology_after_surgery": plant_pathology_before_surgery,
}


@pytest.fixture(scope="module")
def clean(cohort_factory):
    return cohort_factory(25, 8)


def test_clean_cohort_passes_every_dlm_rule(clean, tmp_path):
    results = run(RunSettings(source=str(clean), registry_url=f"sqlite:///{tmp_path / 'r.sqlite'}",
                              out_dir=tmp_path / "o", show_progress=False))
    failed = results["quality"]["failed_critical_checks"] + results["quality"]["failed_warning_checks"]
    assert not [name for name in failed if name.startswith("DLM") and not name.startswith("DLM6")]


@pytest.mark.parametrize("check", sorted(PLANTS))
def test_each_planted_defect_is_caught_by_its_check(clean, tmp_path, check):
    source = tmp_path / "planted"
    shutil.copytree(clean, source)
    PLANTS[check](source)
    with pytest.raises(RunFailed) as failure:
        run(RunSettings(source=str(source), registry_url=f"sqlite:///{tmp_path / 'r.sqlite'}",
                        out_dir=tmp_path / "o", show_progress=False))
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    failed = results["quality"]["failed_critical_checks"]
    assert check in failed and check in str(failure.value)
    if check != "DLM4:lesion_identity_unique":  # the duplicated lesion also lacks studies of its own (DLM7)
        assert failed == [check]


def test_corrupted_cohort_is_refused_naming_every_defect(clean, tmp_path, capsys):
    source = tmp_path / "corrupt"
    shutil.copytree(clean, source)
    for plant in PLANTS.values():
        plant(source)
    out = tmp_path / "out"
    assert main(["run", "--source", str(source), "--out", str(out), "--no-progress"]) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    for check in PLANTS:
        assert check in message
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["status"] == "failed" and "npv" not in results
    assert not (out / "report.html").exists()
