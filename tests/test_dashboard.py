"""The quality dashboard (`OUT/dashboard.html`): the HTML builder on hand-made inputs, and the page a real
run writes, published or failed, opened in headless Chromium (issue #5: quality dashboard)."""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess

import pytest

from etl import tasks
from etl.cli import main
from etl.dashboard import DashboardData, render_dashboard
from etl.pipeline import RunFailed, RunSettings, data_docs_for_run, run
from tests.test_quality_dlm_rules import PLANTS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run "
                                           "installs it)")
T0 = dt.datetime(2025, 3, 1, 8, 0, 0)
FLOW = {"lesions_collected": {"lesions": 60, "patients": 20}, "disappeared_on_ct": {"lesions": 35, "patients": 18},
        "disappeared_on_ct_and_mri": {"lesions": 21, "patients": 16},
        "disappeared_on_ct_visible_on_mri": {"lesions": 14, "patients": 10},
        "excluded_imaging_protocol_not_met": {"lesions": 2, "patients": 2},
        "analysed_ct_and_mri_disappeared": {"lesions": 19, "patients": 15},
        "evaluable_ct_and_mri_disappeared": {"lesions": 17, "patients": 14}}


def _check(name, severity="critical", status="pass", pct=0.0, **extra):
    return {"run_id": "r2", "check_name": name, "check_type": name.split(":")[0], "table_name": "dlm_lesion",
            "field_name": "lesion_id", "severity": severity, "rows_checked": 40,
            "rows_violated": round(pct * 40 / 100), "pct_violated": pct, "threshold_pct": 0.0, "status": status,
            **extra}


def _data(**changes) -> DashboardData:
    checks = [_check("A:passes"), _check("B:warns", "warning", "fail", 5.0), _check("Z:critical", status="fail", pct=2.5),
              _check("C:critical", status="fail", pct=50.0), _check("D:passes_warning", "warning")]
    data = {
        "run": {"run_id": "r2", "source": "cohort/", "started_at": T0, "finished_at": T0 + dt.timedelta(minutes=1),
                "status": "failed", "message": "critical quality checks failed (nothing published): C:critical, "
                                               "Z:critical"},
        "checks": checks,
        "runs": [{"run_id": "r2", "started_at": T0, "status": "failed", "checks": 5, "failed_critical": 2,
                  "failed_warning": 1},
                 {"run_id": "r1", "started_at": T0 - dt.timedelta(days=1), "status": "published", "checks": 5,
                  "failed_critical": 0, "failed_warning": 1}],
        "history": {("C:critical", "r2"): {"pct_violated": 50.0, "status": "fail"},
                    ("C:critical", "r1"): {"pct_violated": 0.0, "status": "pass"},
                    ("B:warns", "r2"): {"pct_violated": 5.0, "status": "fail"},
                    ("B:warns", "r1"): {"pct_violated": 7.5, "status": "fail"},
                    ("Z:critical", "r2"): {"pct_violated": 2.5, "status": "fail"}},
        "unmapped": [{"source_system": "http://loinc.org", "source_code": "21889-1", "field": "Observation.code",
                      "reason": "no mapping row", "occurrences": 196},
                     {"source_system": "", "source_code": "leucovorin", "field": "MedicationAdministration.code",
                      "reason": "no mapping row", "occurrences": 13}],
        "lesion_flow": FLOW,
        "data_docs": False,
    }
    return DashboardData(**(data | changes))


def _table(html: str, table_id: str) -> str:
    found = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert found, f"no table {table_id}"
    return found.group(1)


def _rows(table: str) -> list[list[str]]:
    """Cell texts of the body rows (line-break hints <wbr> dropped)."""
    return [[cell.replace("<wbr>", "") for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S) if "<td" in row]


def _flow_boxes(html: str) -> dict:
    """{key: {"lesions": n, "patients": m}} read back from the SVG boxes."""
    boxes = re.findall(r'<g id="flow-([a-z_]+)">.*?<text[^>]*>[^<]*</text><text[^>]*>(\d+) lesions, (\d+) patients'
                       r"</text></g>", html, re.S)
    return {key: {"lesions": int(lesions), "patients": int(patients)} for key, lesions, patients in boxes}


# --- the HTML builder ----------------------------------------------------------------------------------------

def test_failures_come_first_critical_then_warning_then_passes_collapsed():
    html = render_dashboard(_data())
    failed = [row[0] for row in _rows(_table(html, "failed-checks"))]
    assert failed == ["C:critical", "Z:critical", "B:warns"]
    passed = [row[0] for row in _rows(_table(html, "passed-checks"))]
    assert passed == ["A:passes", "D:passes_warning"]
    assert html.index('id="failed-checks"') < html.index("<details>") < html.index('id="passed-checks"')
    assert _rows(_table(html, "quality-summary")) == [["5", "2", "2", "1", "no"]]
    header = re.findall(r"<th>(.*?)</th>", _table(html, "failed-checks"))
    assert header == ["Check", "Type", "Table", "Field", "Severity", "Rows checked", "Rows violated", "% violated",
                      "Threshold %", "Status"]
    assert _rows(_table(html, "failed-checks"))[0][5:] == ["40", "20", "50.00", "0.00", "fail"]


def test_a_clean_run_has_no_failures_and_says_so():
    checks = [_check("A:passes"), _check("D:passes_warning", "warning")]
    html = render_dashboard(_data(checks=checks, history={}, run=_data().run | {"status": "published",
                                                                                 "message": None}))
    assert '<p id="failed-checks">No check failed.</p>' in html
    assert _rows(_table(html, "quality-summary")) == [["2", "2", "0", "0", "yes"]]
    assert "not published" not in html.lower() and 'id="failing-history"' not in html


def test_every_text_from_data_is_escaped():
    hostile = '<script>alert("x")</script>&'
    data = _data(checks=[_check(hostile, status="fail", pct=1.0, check_type="X")],
                 unmapped=[{"source_system": hostile, "source_code": "<b>", "field": "Observation.code",
                            "reason": "no mapping row", "occurrences": 1}],
                 run=_data().run | {"source": hostile, "message": hostile})
    html = render_dashboard(data)
    assert "<script" not in html and "<b>" not in html
    # the check (its row and its history), the code system, the run's source and message
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;") == 5


def test_unmapped_codes_listed_with_their_counts():
    html = render_dashboard(_data())
    assert _rows(_table(html, "unmapped-codes")) == [
        ["http://loinc.org", "21889-1", "Observation.code", "no mapping row", "196"],
        ["", "leucovorin", "MedicationAdministration.code", "no mapping row", "13"]]
    assert '<p id="unmapped-codes">No unmapped codes.</p>' in render_dashboard(_data(unmapped=[]))


def test_flow_boxes_carry_the_lesion_and_patient_counts():
    html = render_dashboard(_data())
    assert _flow_boxes(html) == FLOW
    assert "Lesion flow (audited data, not published)" in html
    published = render_dashboard(_data(run=_data().run | {"status": "published"}))
    assert _flow_boxes(published) == FLOW and "not published" not in published.lower()
    assert "Not available: the run stopped before the audit." in render_dashboard(_data(lesion_flow=None))


def test_failing_checks_show_their_violated_share_in_earlier_runs():
    rows = _rows(_table(render_dashboard(_data()), "failing-history"))
    assert rows == [["C:critical", "50.00 (fail)", "0.00 (pass)"], ["Z:critical", "2.50 (fail)", "\u2013"],
                    ["B:warns", "5.00 (fail)", "7.50 (fail)"]]


def test_runs_newest_first_with_a_bar_per_run():
    html = render_dashboard(_data())
    assert _rows(_table(html, "runs")) == [["2025-03-01 08:00:00", "failed", "5", "2", "1"],
                                           ["2025-02-28 08:00:00", "published", "5", "0", "1"]]
    assert len(re.findall(r"<g><title>", html)) == 2


def test_data_docs_linked_only_when_present():
    assert "data_docs/index.html" not in render_dashboard(_data())
    assert '<a href="data_docs/index.html">' in render_dashboard(_data(data_docs=True))


def test_page_is_self_contained():
    html = render_dashboard(_data(data_docs=True))
    assert set(re.findall(r'(?:src|href)="([^"]*)"', html)) == {"data_docs/index.html"}
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert re.findall(r"url\(([^)]*)\)", html) == ["#arrow"] * 6


# --- headless Chromium ---------------------------------------------------------------------------------------

def chromium_dom(page, profile) -> tuple[str, list[str]]:
    """Load `page` in headless Chromium: (the rendered DOM, console messages).

    Chromium logs every console message (console.log/warn/error and uncaught exceptions alike) to stderr as
    `INFO:CONSOLE...`, without its level, so every console line counts: the dashboard has no scripts and
    must print nothing.
    """
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_harness_sees_console_errors(tmp_path):
    """The harness itself: a page that logs an error, or throws, is caught; a quiet page is not."""
    pages = {"logs": "<script>console.error('planted console error')</script>",
             "throws": "<script>throw new Error('planted exception')</script>", "quiet": "<p>quiet</p>"}
    seen = {}
    for name, body in pages.items():
        (tmp_path / f"{name}.html").write_text(f"<!DOCTYPE html><html><body>{body}</body></html>")
        seen[name] = chromium_dom(tmp_path / f"{name}.html", tmp_path / f"profile-{name}")[1]
    assert any("planted console error" in line for line in seen["logs"])
    assert any("planted exception" in line for line in seen["throws"])
    assert seen["quiet"] == []


@pytest.fixture(scope="module")
def clean(cohort_factory):
    """The clean cohort of the DLM rule tests (tests/test_quality_dlm_rules.py)."""
    return cohort_factory(25, 8)


def _corrupted(clean, directory):
    shutil.copytree(clean, directory)
    for plant in PLANTS.values():
        plant(directory)
    return directory


def _patient_identifiers(source) -> set[str]:
    found = set()
    for line in (source / "Patient.ndjson").read_text().splitlines():
        patient = json.loads(line)
        found.add(patient["id"])
        found.update(i["value"] for i in patient.get("identifier", []))
        found.update(" ".join(n.get("given", []) + [n.get("family", "")]) for n in patient.get("name", []))
    return found


@needs_chromium
def test_failed_run_dashboard_names_the_failed_critical_checks(clean, tmp_path, capsys):
    source, out = _corrupted(clean, tmp_path / "corrupt"), tmp_path / "out"
    assert main(["run", "--source", str(source), "--out", str(out), "--no-progress"]) == 1
    assert "critical quality checks failed" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["status"] == "failed" and sorted(results["quality"]["failed_critical_checks"]) == \
        sorted(PLANTS)

    dom, console = chromium_dom(out / "dashboard.html", tmp_path / "profile")
    assert console == []
    failed = _table(dom, "failed-checks")
    critical = [row[0] for row in _rows(failed)[:len(PLANTS)]]
    assert sorted(critical) == sorted(PLANTS)
    assert len(re.findall(r'<tr class="fail-critical">', failed)) == len(PLANTS)
    assert dom.index('id="failed-checks"') < dom.index("<details>")  # shown, not collapsed
    assert "Lesion flow (audited data, not published)" in dom
    assert _flow_boxes(dom) == results["lesion_flow"]
    assert results["lesion_flow"]["lesions_collected"]["lesions"] > 0
    html = (out / "dashboard.html").read_text()
    assert not [i for i in _patient_identifiers(source) if i in html]


@needs_chromium
def test_published_run_dashboard_has_no_critical_failure_and_the_published_flow(clean, tmp_path, monkeypatch):
    """A clean cohort: published, no critical failure, and the page lists exactly the warnings results.json
    names (the synthetic cohort has some MRIs without the DREAM protocol: DLM6), and links the run's Data Docs."""
    monkeypatch.setenv("DLMREG_DATA_DOCS", "on")
    out = tmp_path / "out"
    results = run(RunSettings(source=str(clean), registry_url=f"sqlite:///{tmp_path / 'r.sqlite'}", out_dir=out,
                              show_progress=False))
    quality = results["quality"]
    assert results["run"]["status"] == "published" and quality["failed_critical"] == 0
    dom, console = chromium_dom(out / "dashboard.html", tmp_path / "profile")
    assert console == []
    assert 'class="fail-critical"' not in dom
    failed = _rows(_table(dom, "failed-checks")) if quality["failed_warning"] else []
    assert sorted(row[0] for row in failed) == quality["failed_warning_checks"]
    assert _rows(_table(dom, "quality-summary")) == [
        [str(quality["checks"]), str(quality["passed"]), "0", str(quality["failed_warning"]), "yes"]]
    assert _flow_boxes(dom) == json.loads((out / "results.json").read_text())["lesion_flow"]
    assert "not published" not in dom.lower()
    assert '<a href="data_docs/index.html">' in dom and (out / "data_docs" / "index.html").exists()


def test_data_docs_off_removes_an_earlier_runs_docs(tmp_path, monkeypatch):
    """With DLMREG_DATA_DOCS=off a run builds no Data Docs, and the dashboard must not link to the docs an
    earlier run left in the same OUT."""
    earlier = tmp_path / "data_docs" / "index.html"
    earlier.parent.mkdir()
    earlier.write_text("earlier run")
    monkeypatch.setenv("DLMREG_DATA_DOCS", "on")
    assert data_docs_for_run(tmp_path) == earlier.parent and earlier.exists()
    monkeypatch.setenv("DLMREG_DATA_DOCS", "off")
    assert data_docs_for_run(tmp_path) is None and not earlier.parent.exists()
    assert data_docs_for_run(None) is None


# --- trends, on SQLite and PostgreSQL ------------------------------------------------------------------------

def test_trend_over_a_published_then_a_failed_run(clean, tmp_path, registry_factory):
    url = registry_factory()
    good = run(RunSettings(source=str(clean), registry_url=url, out_dir=tmp_path / "good", show_progress=False))
    with pytest.raises(RunFailed):
        run(RunSettings(source=str(_corrupted(clean, tmp_path / "corrupt")), registry_url=url,
                        out_dir=tmp_path / "bad", show_progress=False))
    bad = json.loads((tmp_path / "bad" / "results.json").read_text())
    html = (tmp_path / "bad" / "dashboard.html").read_text()
    runs = _rows(_table(html, "runs"))
    assert [row[1:] for row in runs] == [
        ["failed", str(bad["quality"]["checks"]), str(len(PLANTS)), str(bad["quality"]["failed_warning"])],
        ["published", str(good["quality"]["checks"]), "0", str(good["quality"]["failed_warning"])]]
    history = {row[0]: row[1:] for row in _rows(_table(html, "failing-history"))}
    assert set(history) == set(PLANTS) | set(bad["quality"]["failed_warning_checks"])
    assert all(history[check][0].endswith("(fail)") and history[check][1] == "0.00 (pass)" for check in PLANTS)
    # the audited flow of the failed run counts the planted duplicate lesion; the published one does not
    assert _flow_boxes(html) == bad["lesion_flow"]
    assert bad["lesion_flow"]["lesions_collected"]["lesions"] == good["lesion_flow"]["lesions_collected"]["lesions"] + 1


def test_orchestrator_tasks_write_the_dashboard_of_a_failed_run(clean, tmp_path):
    """The Airflow path (etl.tasks): the audit's summary travels on RunFailed to the teardown, which writes
    results.json with it and the dashboard."""
    settings = tasks.resolve_settings({"source": str(_corrupted(clean, tmp_path / "corrupt")),
                                       "out_dir": str(tmp_path / "out"),
                                       "registry_url": f"sqlite:///{tmp_path / 'r.sqlite'}"}, "manual__1", "2025-03-01")
    staged = tasks.stage_task(settings["run_id"], settings["source"], settings["registry_url"])
    with pytest.raises(RunFailed) as failure:
        tasks.load_audit_task(settings["run_id"], settings["source_label"], settings["registry_url"],
                              settings["today"])
    assert tasks.record_run_task(settings, {**staged, **failure.value.audit}, False, "load_and_audit") == "failed"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["quality"] == failure.value.audit["quality"] and "quality" not in results["run"]
    html = (tmp_path / "out" / "dashboard.html").read_text()
    assert sorted(row[0] for row in _rows(_table(html, "failed-checks"))[:len(PLANTS)]) == sorted(PLANTS)
    assert _flow_boxes(html) == results["lesion_flow"] == failure.value.audit["lesion_flow"]
