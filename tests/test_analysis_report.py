"""analyse() end to end and the HTML/PNG report (etl.analysis, etl.analysis.report)."""
import json

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
    assert [p.name for p in paths] == ["km_rfs.png", "km_os.png", "report.html"]
    for png in paths[:2]:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 10_000

    html = (out / "report.html").read_text(encoding="utf-8")
    assert MALICIOUS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'src="km_rfs.png"' in html and 'src="km_os.png"' in html
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
