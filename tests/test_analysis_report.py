"""analyse() end to end and the HTML/PNG report (etl.analysis, etl.analysis.report)."""
import json
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from etl.analysis import analyse
from etl.analysis.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MALICIOUS = "<script>alert(1)</script>"


@pytest.fixture
def lesions():
    rows = []
    # 8 patients, 3 CT+MRI-disappeared lesions each; true negatives: 2 of 3 in even patients,
    # 1 of 3 in odd ones -> NPV = (4*2 + 4*1) / 24 = 50%; CE-IOUS in even patients -> 66.7%
    for person in range(8):
        tn = 2 if person % 2 == 0 else 1
        for k in range(3):
            rows.append((person, person * 10 + k, "ct_and_mri_disappeared",
                         "true_negative" if k < tn else "residual", person % 2 == 0))
        rows.append((person, person * 10 + 3, "not_disappeared", None, person % 2 == 0))
    return pd.DataFrame(rows, columns=["person_id", "lesion_id", "dlm_group", "outcome",
                                       "ce_ious"])


@pytest.fixture
def patients():
    removed = [(5.0, 1, 30.0, 0), (8.0, 1, 40.0, 1), (12.5, 0, 50.0, 0), (20.0, 1, 55.0, 0)]
    left = [(3.0, 1, 14.0, 1), (4.0, 1, 26.0, 0), (9.0, 1, 33.0, 1), (30.0, 0, 45.0, 0)]
    rows = [("all_dlm_removed", *r) for r in removed] + [("dlm_left_behind", *r) for r in left]
    frame = pd.DataFrame(rows, columns=["strategy", "rfs_months", "rfs_event", "os_months",
                                        "os_event"])
    return frame.assign(person_id=range(len(frame)))


def test_analyse_is_json_serialisable(lesions, patients):
    results = analyse(lesions, patients)
    assert set(results) == {"npv", "npv_subgroups", "npv_sensitivity", "survival_by_surgical_strategy", "comparison"}
    text = json.dumps(results, allow_nan=False)
    assert json.loads(text) == results
    assert results["npv"]["ct_and_mri_disappeared"]["estimate"] == 0.5
    metrics = [row["metric"] for row in results["comparison"]]
    assert "npv.ct_and_mri_disappeared" in metrics
    assert "survival_by_surgical_strategy.overall_survival.all_dlm_removed.hr" in metrics


def test_report_writes_html_and_pngs(lesions, patients, tmp_path):
    results = analyse(lesions, patients)
    results["run"] = {"resources_read": 41, "loaded": 37, "quarantined": 3, "excluded": 1,
                      "source": MALICIOUS}
    results["quality"] = {"passed": 12, "failed_critical": [], "failed_warning": [MALICIOUS]}
    out = tmp_path / "out"
    paths = write_report(results, patients, out)
    assert [p.name for p in paths] == ["km_rfs.png", "km_os.png", "forest_npv.png", "report.html"]
    for png in paths[:3]:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 10_000

    html = (out / "report.html").read_text(encoding="utf-8")
    assert MALICIOUS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'src="km_rfs.png"' in html and 'src="km_os.png"' in html and 'src="forest_npv.png"' in html
    assert 'src="http' not in html and "<link" not in html and "<script" not in html
    # run accounting, NPV (percentages) and survival figures appear
    assert "<td>41</td>" in html and "<td>37</td>" in html
    assert "50.0%" in html and "66.7%" in html
    rfs = results["survival_by_surgical_strategy"]["relapse_free_survival"]
    removed = rfs["all_dlm_removed"]
    assert f"{removed['events']}/{removed['total']}" in html
    assert f"{removed['median']:.1f}" in html
    assert f"{removed['hr']:.2f}" in html
    assert f"{removed['logrank_p']:.3g}" in html
    lo, hi = results["npv"]["ct_and_mri_disappeared"]["ci95"]
    assert f"{100 * lo:.1f}%\u2013{100 * hi:.1f}%" in html


def test_report_escapes_input_text_nested_in_the_run_accounting(lesions, patients, tmp_path):
    """Quarantine reasons, warnings and a server's messages carry text from the input (a hostile resourceType,
    an OperationOutcome); nested in the run accounting (dict keys, list items) they are escaped too."""
    results = analyse(lesions, patients)
    results["run"] = {"resources_read": 3, "loaded": 1, "quarantined": 2, "excluded": 0,
                      "quarantined_by_reason": {f"resourceType {MALICIOUS} in a file of Observation": 1,
                                                f"unknown resourceType {MALICIOUS}": 1},
                      "warnings": {MALICIOUS: 2},
                      "extract": {"source": "files:x", "server_messages": [MALICIOUS]}}
    write_report(results, patients, tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4


def test_report_refuses_patients_that_do_not_match_results(lesions, patients, tmp_path):
    results = analyse(lesions, patients)
    with pytest.raises(ValueError):
        write_report(results, patients.iloc[1:], tmp_path)


def test_report_with_an_empty_arm(lesions, patients, tmp_path):
    only_removed = patients[patients["strategy"] == "all_dlm_removed"]
    results = analyse(lesions, only_removed)
    hr = results["survival_by_surgical_strategy"]["overall_survival"]["all_dlm_removed"]["hr"]
    assert hr is None
    paths = write_report(results, only_removed, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)
    assert "reference" in (tmp_path / "report.html").read_text(encoding="utf-8")


# --- forest plot rows -------------------------------------------------------------------------

def test_forest_rows_follow_the_results(lesions, patients):
    from etl.analysis.forest_plot import forest_rows
    from etl.analysis.report import GROUP_LABELS

    results = analyse(lesions.assign(baseline_size_mm=[5.0, 15.0, 25.0, 30.0] * 8), patients)
    rows = forest_rows(results["npv"], results["npv_subgroups"], GROUP_LABELS)
    main = {r["label"]: r for r in rows if not r["heading"] and not r["label"].startswith(" ")}
    both = main[GROUP_LABELS["ct_and_mri_disappeared"]]
    assert (both["true_negative"], both["evaluable"], both["estimate"]) == (12, 24, 0.5)
    assert both["ci95"] == results["npv"]["ct_and_mri_disappeared"]["ci95"]
    headings = [r["label"] for r in rows if r["heading"]]
    assert headings[0].endswith("by subgroup:")
    # only categories with evaluable lesions get a row: CE-IOUS used / not used, three size bands
    ce = rows[rows.index(next(r for r in rows if r["label"].startswith("Contrast"))) + 1:][:2]
    assert [r["label"].strip() for r in ce] == ["used", "not used"]
    assert [r["estimate"] for r in ce] == pytest.approx([2 / 3, 1 / 3])
    sizes = [r["label"].strip() for r in rows if r["label"].strip() in ("< 10 mm", "10-19 mm", ">= 20 mm")]
    assert sizes == ["< 10 mm", "10-19 mm", ">= 20 mm"]


# --- the whole report from a pipeline run, opened in headless Chromium ------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                    reason="Debian's chromium is not installed (.ci/run installs it)")
# Appended to a copy of the page only: reports each image's decoded width once everything has loaded.
IMAGE_PROBE = ("<script>window.addEventListener('load', () => { document.body.setAttribute('data-images', "
               "[...document.images].map(i => i.getAttribute('src') + '=' + i.naturalWidth + 'x' + "
               "i.naturalHeight).join(' ')); });</script>")


@pytest.fixture(scope="module")
def published(cohort_factory, tmp_path_factory):
    from etl.pipeline import RunSettings, run

    out = tmp_path_factory.mktemp("report") / "out"
    source = cohort_factory(60, 5)
    os.environ["DLMREG_REPORT_PDF"] = "auto"
    try:
        results = run(RunSettings(source=str(source), registry_url=f"sqlite:///{out.parent / 'r.sqlite'}",
                                  out_dir=out, show_progress=False))
    finally:
        os.environ["DLMREG_REPORT_PDF"] = "off"
    return results, out


def _chromium(args, profile):
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def _png_is_a_drawing(path, min_width):
    """Decode the PNG and check it is a real picture: big enough and not one flat colour."""
    import numpy as np
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= 300, path
    ink = (pixels[..., :3] < 0.5).any(axis=2).mean()   # share of dark pixels: lines, text, markers
    assert 0.005 < ink < 0.5, (path, ink)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20, path


@needs_chromium
def test_report_opens_in_chromium_with_every_figure_loaded(published, tmp_path):
    results, out = published
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page
    probe = out / "report_probe.html"
    probe.write_text(page.replace("</body>", IMAGE_PROBE + "</body>"), encoding="utf-8")
    try:
        dom, console = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()],
                                 tmp_path / "profile")
    finally:
        probe.unlink()
    assert console == []
    images = dict(item.split("=") for item in re.search(r'data-images="([^"]*)"', dom).group(1).split())
    assert set(images) == {"km_rfs.png", "km_os.png", "forest_npv.png"}
    for name, size in images.items():
        width, height = (int(v) for v in size.split("x"))
        assert width > 300 and height > 300, (name, size)   # 0x0 when an image fails to load
        _png_is_a_drawing(out / name, 600)
    # the sections a clinician expects, with the numbers of results.json
    for heading in ("Lesion flow", "Negative predictive value per lesion group", "Subgroups", "Sensitivity analyses",
                    "Survival by surgical strategy", "Comparison with DREAM", "Methods in plain words"):
        assert f">{heading}" in dom, heading
    flow = results["lesion_flow"]["analysed_ct_and_mri_disappeared"]
    assert f"{flow['lesions']} lesions, {flow['patients']} patients" in dom
    both = results["npv"]["ct_and_mri_disappeared"]
    assert f"{100 * both['estimate']:.1f}%" in dom
    binomial = next(r for r in results["comparison"] if r["metric"] == "npv.ct_and_mri_disappeared")["test"]
    assert binomial["method"] in dom and f"{binomial['p_value']:.3g}" in dom


@needs_chromium
def test_report_pdf_is_printed_with_its_figures(published):
    from pypdf import PdfReader

    _, out = published
    reader = PdfReader(out / "report.pdf")
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "Negative predictive value per lesion group" in text and "Methods in plain words" in text
    assert sum(len(page.images) for page in reader.pages) == 3   # two Kaplan-Meier plots and the forest plot


def test_report_pdf_is_skipped_without_a_renderer(lesions, patients, tmp_path, monkeypatch):
    monkeypatch.setenv("DLMREG_REPORT_PDF", "auto")
    monkeypatch.setenv("DLMREG_CHROMIUM", "/nonexistent/chromium")
    paths = write_report(analyse(lesions, patients), patients, tmp_path)
    assert not (tmp_path / "report.pdf").exists() and paths[-1].name == "report.html"
