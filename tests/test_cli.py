"""The command line: the README's main job, exit codes and one-line reasons, a corrupted cohort that
must not be published."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys

from etl.cli import main
from tests.test_quality_dlm_rules import plant_duplicate_lesion


def test_main_job_on_the_embedded_default(tmp_path):
    """`dlmreg run` with no arguments: demo cohort -> SQLite registry -> report (the README's command)."""
    completed = subprocess.run([sys.executable, "-m", "etl.cli", "run", "--out", str(tmp_path / "out")],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = tmp_path / "out"
    for name in ("results.json", "report.html", "km_rfs.png", "km_os.png", "dlm_registry.sqlite", "unmapped_codes.csv"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["status"] == "published"
    assert results["run"]["resources_read"] == results["run"]["loaded"] + results["run"]["quarantined"] + \
        results["run"]["excluded"]
    assert results["npv"]["ct_and_mri_disappeared"]["lesions"] > 50
    assert "Traceback" not in completed.stderr
    assert "<td>published</td>" in (out / "report.html").read_text().replace(" ", "")
    seconds = results["run"]["seconds"]
    assert list(seconds) == ["stage", "map_load_derive", "audit", "analysis_report"]
    started, finished = (dt.datetime.fromisoformat(results["run"][k]) for k in ("started_at", "finished_at"))
    assert all(v > 0 for v in seconds.values()) and sum(seconds.values()) <= (finished - started).total_seconds()
    peaks = list(results["run"]["peak_rss_mib"].values())   # the high-water mark of each phase, in order
    assert list(results["run"]["peak_rss_mib"]) == list(seconds) and peaks == sorted(peaks) and peaks[0] > 10


def test_missing_source_is_a_one_line_error(tmp_path, capsys):
    assert main(["run", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dlmreg: source not found")


def test_unreachable_registry_is_a_one_line_error(cohort_factory, tmp_path, capsys):
    code = main(["run", "--source", str(cohort_factory(10, 1)), "--out", str(tmp_path / "o"),
                 "--registry", "postgresql+psycopg://nobody@127.0.0.1:1/registry"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("dlmreg: registry database not reachable")


def test_corrupted_cohort_is_not_published(cohort_factory, tmp_path, capsys):
    source = tmp_path / "corrupt"
    shutil.copytree(cohort_factory(20, 4), source)
    plant_duplicate_lesion(source)
    out = tmp_path / "out"
    assert main(["run", "--source", str(source), "--out", str(out), "--no-progress"]) == 1
    assert "DLM4:lesion_identity_unique" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["status"] == "failed"
    # The twin shares the identity of another lesion (DLM4) and has no baseline study of its own (DLM7).
    assert results["quality"]["failed_critical_checks"] == ["DLM4:lesion_identity_unique",
                                                            "DLM7:baseline_before_chemotherapy"]
    assert "npv" not in results and not (out / "report.html").exists()
    assert list(results["run"]["seconds"]) == ["stage", "map_load_derive", "audit"]   # the phases it reached
    assert list(results["run"]["peak_rss_mib"]) == ["stage", "map_load_derive", "audit"]
    assert results["run"]["resources_read"] == results["run"]["loaded"] + results["run"]["quarantined"] + \
        results["run"]["excluded"]


def test_synth_command_accepts_parameters(tmp_path, capsys):
    assert main(["synth", "--patients", "5", "--seed", "2", "--out", str(tmp_path / "c"),
                 "--param", "left_in_place_share=0"]) == 0
    truth = json.loads((tmp_path / "c" / "truth.json").read_text())
    assert truth["params"]["left_in_place_share"] == 0
    assert main(["synth", "--patients", "5", "--out", str(tmp_path / "d"), "--param", "nonsense=1"]) == 2
