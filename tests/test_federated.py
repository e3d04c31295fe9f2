"""Federated use: site aggregates (etl.analysis.aggregates) and their pooling (etl.analysis.pooling).

Hand-computed cases for DerSimonian-Laird and the monthly product-limit, pooled KM against lifelines on
the combined patients' floor-month times, homogeneous NPV pooling against the combined counts, the
suppression rules S1-S4, and `dlmreg export-aggregates` / `dlmreg pool` end to end on two registries.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from etl.analysis.aggregates import (
    CHILD_GROUPS,
    PARENT_GROUP,
    monthly_risk_table,
    npv_counts,
    site_aggregates,
    suppress_npv,
    suppress_risk_table,
)
from etl.analysis.pooling import (
    dersimonian_laird,
    pool_npv_row,
    pool_risk_tables,
    pool_sites,
    product_limit,
)

COUNT_KEYS = {"true_negative", "residual", "unevaluable", "at_risk", "events", "censored"}


def _counts(node):
    """Every value under a count key anywhere in a site file."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in COUNT_KEYS:
                yield value
            else:
                yield from _counts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _counts(item)


def _lifelines_km(durations, events):
    from lifelines import KaplanMeierFitter

    return KaplanMeierFitter().fit(np.floor(np.asarray(durations, dtype=float)), event_observed=events)


# --- DerSimonian-Laird ---------------------------------------------------------------------------------

def test_dersimonian_laird_by_hand():
    # y = (0, 2), v = (1, 1): w = (1, 1); fixed mean 1, se sqrt(1/2); Q = 1*(0-1)^2 + 1*(2-1)^2 = 2 on
    # df 1; C = 2 - 2/2 = 1; tau^2 = (2 - 1)/1 = 1; I^2 = (2 - 1)/2 = 0.5; random weights 1/(1+1) = 1/2
    # each: mean 1, se sqrt(1/(1/2 + 1/2)) = 1.
    result = dersimonian_laird([0.0, 2.0], [1.0, 1.0])
    assert result["q"] == pytest.approx(2.0)
    assert result["df"] == 1
    assert result["tau2"] == pytest.approx(1.0)
    assert result["i2"] == pytest.approx(0.5)
    assert result["fixed"]["estimate"] == pytest.approx(1.0)
    assert result["fixed"]["se"] == pytest.approx(math.sqrt(0.5))
    assert result["random"]["estimate"] == pytest.approx(1.0)
    assert result["random"]["se"] == pytest.approx(1.0)
    assert result["random"]["ci95"] == pytest.approx([1 - 1.959964, 1 + 1.959964], abs=1e-6)


def test_dersimonian_laird_no_heterogeneity_truncates_tau2_at_zero():
    # y = (0, 1), v = (1, 1): Q = 0.25 + 0.25 = 0.5 < df = 1, so tau^2 = max(0, -0.5) = 0 and I^2 = 0.
    result = dersimonian_laird([0.0, 1.0], [1.0, 1.0])
    assert result["tau2"] == 0.0 and result["i2"] == 0.0
    assert result["random"] == result["fixed"]


def _dl_reference(y, v):
    """Independent, loop-by-loop DerSimonian-Laird (textbook formulas, no numpy)."""
    w = [1 / vi for vi in v]
    sw = sum(w)
    mean_fixed = sum(wi * yi for wi, yi in zip(w, y)) / sw
    q = sum(wi * (yi - mean_fixed) ** 2 for wi, yi in zip(w, y))
    df = len(y) - 1
    tau2 = max(0.0, (q - df) / (sw - sum(wi * wi for wi in w) / sw))
    ws = [1 / (vi + tau2) for vi in v]
    mean_random = sum(wi * yi for wi, yi in zip(ws, y)) / sum(ws)
    return mean_fixed, q, tau2, max(0.0, (q - df) / q), mean_random, (1 / sum(ws)) ** 0.5


def test_dersimonian_laird_matches_independent_implementation():
    y, v = [0.1, 0.5, 1.2, -0.3], [0.04, 0.09, 0.16, 0.25]
    mean_fixed, q, tau2, i2, mean_random, se_random = _dl_reference(y, v)
    assert tau2 > 0                                  # a heterogeneous example
    result = dersimonian_laird(y, v)
    assert result["fixed"]["estimate"] == pytest.approx(mean_fixed, rel=1e-12)
    assert result["q"] == pytest.approx(q, rel=1e-12)
    assert result["tau2"] == pytest.approx(tau2, rel=1e-12)
    assert result["i2"] == pytest.approx(i2, rel=1e-12)
    assert result["random"]["estimate"] == pytest.approx(mean_random, rel=1e-12)
    assert result["random"]["se"] == pytest.approx(se_random, rel=1e-12)


def test_single_study_has_no_heterogeneity_statistics():
    result = dersimonian_laird([0.3], [0.1])
    assert result["q"] is None and result["tau2"] is None and result["i2"] is None
    assert result["random"]["estimate"] == result["fixed"]["estimate"] == 0.3


# --- NPV pooling ---------------------------------------------------------------------------------------

def _row(tn, res, unev=0):
    return {"true_negative": tn, "residual": res, "unevaluable": unev, "suppressed": False}


def test_homogeneous_sites_pool_to_the_combined_count_estimate():
    # 30/50 and 60/100 have the same NPV 0.6, so both logits are log(0.6/0.4): Q = 0, tau^2 = 0, I^2 = 0,
    # and any weighted mean of equal logits is that logit. The combined counts give 90/150 = 0.6 as well,
    # so the pooled NPV equals the combined estimate; the tolerance (1e-12) only absorbs rounding.
    pooled = pool_npv_row([("a", _row(30, 20)), ("b", _row(60, 40))])
    assert pooled["tau2"] == 0.0 and pooled["i2"] == 0.0 and pooled["q"] == pytest.approx(0.0, abs=1e-12)
    # the inverse-variance value: weights 1/(1/30 + 1/20) = 12 and 1/(1/60 + 1/40) = 24
    inverse_variance = (12 * math.log(30 / 20) + 24 * math.log(60 / 40)) / 36
    assert pooled["random"]["logit"] == pytest.approx(inverse_variance, abs=1e-12)
    assert pooled["fixed"]["logit"] == pytest.approx(inverse_variance, abs=1e-12)
    assert pooled["random"]["se"] == pytest.approx(math.sqrt(1 / 36), abs=1e-12)
    assert pooled["combined_estimate"] == pytest.approx(0.6, abs=1e-12)
    assert pooled["random"]["estimate"] == pytest.approx(pooled["combined_estimate"], abs=1e-12)
    assert pooled["continuity_corrected"] == []


def test_continuity_correction_only_for_a_zero_cell_and_exclusions_are_listed():
    pooled = pool_npv_row([("a", _row(10, 0)), ("b", _row(8, 2)), ("c", _row(0, 0, 3)),
                           ("d", {"true_negative": None, "residual": None, "unevaluable": None,
                                  "suppressed": True}), ("e", None)])
    assert pooled["sites_included"] == ["a", "b"]
    assert pooled["continuity_corrected"] == ["a"]
    assert {e["site"]: e["reason"] for e in pooled["sites_excluded"]} == {
        "c": "no evaluable lesion", "d": "suppressed", "e": "row missing"}
    # a: log(10.5/0.5), v = 1/10.5 + 1/0.5; b: log(8/2), v = 1/8 + 1/2 (uncorrected)
    expected = dersimonian_laird([math.log(10.5 / 0.5), math.log(4)], [1 / 10.5 + 2, 1 / 8 + 1 / 2])
    assert pooled["random"]["logit"] == pytest.approx(expected["random"]["estimate"])
    assert pooled["true_negative"] == 18 and pooled["residual"] == 2 and pooled["unevaluable"] == 3


# --- Kaplan-Meier over months --------------------------------------------------------------------------

def test_monthly_product_limit_by_hand():
    rows = [{"month": 0, "at_risk": 10, "events": 2, "censored": 0},
            {"month": 1, "at_risk": 8, "events": 0, "censored": 2},
            {"month": 2, "at_risk": 6, "events": 3, "censored": 3}]
    curve = product_limit(rows)
    # S = 1 - 2/10 = 0.8; no event in month 1: 0.8; then 0.8 * (1 - 3/6) = 0.4.
    assert [r["survival"] for r in curve] == pytest.approx([0.8, 0.8, 0.4])
    # Greenwood sum: 2/(10*8) = 0.025, then + 3/(6*3) = 0.191667; log-log interval
    greenwood = 0.025 + 3 / 18
    half = 1.959964 * math.sqrt(greenwood) / abs(math.log(0.4))
    centre = math.log(-math.log(0.4))
    assert curve[2]["ci95"] == pytest.approx([math.exp(-math.exp(centre + half)),
                                              math.exp(-math.exp(centre - half))], abs=1e-6)


def test_monthly_risk_table_floors_times():
    rows = monthly_risk_table([0.2, 0.9, 1.0, 1.5, 3.99], [1, 0, 1, 1, 0])
    assert rows == [
        {"month": 0, "at_risk": 5, "events": 1, "censored": 1},
        {"month": 1, "at_risk": 3, "events": 2, "censored": 0},
        {"month": 2, "at_risk": 1, "events": 0, "censored": 0},
        {"month": 3, "at_risk": 1, "events": 0, "censored": 1},
    ]
    assert monthly_risk_table([], []) == []


def test_pooling_two_sites_gives_the_km_of_their_patients_together():
    """Pooled monthly tables = lifelines on both sites' patients with times floored to months."""
    rng = np.random.default_rng(11)
    sites = []
    for n, scale in ((80, 20.0), (120, 35.0)):
        t_event, t_censor = rng.exponential(scale, n), rng.uniform(0, 60, n)
        sites.append((np.minimum(t_event, t_censor), (t_event <= t_censor).astype(int)))
    pooled = pool_risk_tables([(f"s{i}", suppress_risk_table(monthly_risk_table(d, e), 1))
                               for i, (d, e) in enumerate(sites)])
    assert pooled["truncated_at_month"] is None
    durations = np.concatenate([d for d, _ in sites])
    events = np.concatenate([e for _, e in sites])
    fitter = _lifelines_km(durations, events)
    months = [r["month"] for r in pooled["months"]]
    expected = fitter.survival_function_at_times(months).to_numpy()
    assert [r["survival"] for r in pooled["months"]] == pytest.approx(expected, abs=1e-12)
    ci = fitter.confidence_interval_survival_function_
    checked = 0
    for row in pooled["months"]:
        if 0 < row["survival"] < 1 and float(row["month"]) in ci.index:
            assert row["ci95"] == pytest.approx(ci.loc[float(row["month"])].to_list(), abs=1e-9)
            checked += 1
        assert row["at_risk"] == int(np.sum(np.floor(durations) >= row["month"]))
    assert checked > 20


def test_pooled_curve_stops_at_the_first_suppressed_month():
    site_a = suppress_risk_table(monthly_risk_table([0.5] * 10 + [5.5] * 10, [1] * 10 + [0] * 10), 5)
    site_b = suppress_risk_table(monthly_risk_table([0.5] * 6 + [2.5] * 3 + [9.0] * 6, [1] * 15), 5)
    # b: month 2 has 3 events (S1), so months 2.. are suppressed (S4)
    assert [r["suppressed"] for r in site_b][:3] == [False, False, True]
    assert all(r["suppressed"] for r in site_b[2:])
    pooled = pool_risk_tables([("a", site_a), ("b", site_b)])
    assert pooled["truncated_at_month"] == 2 and pooled["truncated_by"] == ["b"]
    assert [r["month"] for r in pooled["months"]] == [0, 1]
    assert pooled["months"][0]["survival"] == pytest.approx(1 - 16 / 35)


# --- suppression ---------------------------------------------------------------------------------------

def _lesions(rows):
    return pd.DataFrame(rows, columns=["person_id", "lesion_id", "dlm_group", "outcome", "ce_ious",
                                       "mri_protocol_met", "baseline_size_mm"])


def test_npv_suppression_rules():
    rows = []
    for i in range(20):                              # ct_and_mri: 10 TN + 10 residual, CE-IOUS 17 / 3
        rows.append((i, i, "ct_and_mri_disappeared", "true_negative" if i < 10 else "residual", i < 17,
                     True, 25.0))
    for i in range(20, 30):                          # visible: 5 TN + 5 residual, all large, no CE-IOUS
        rows.append((i, i, "ct_disappeared_mri_visible", "true_negative" if i < 25 else "residual", False,
                     True, 25.0))
    table = suppress_npv(npv_counts(_lesions(rows)), 5)
    both = table["ct_and_mri_disappeared"]
    assert both["all"]["all"] == {"true_negative": 10, "residual": 10, "unevaluable": 0, "suppressed": False}
    # S1: not_used holds residual 3; S2: its sibling `used` is suppressed as well (else used = all - not_used)
    assert both["ce_ious"]["not_used"]["suppressed"] and both["ce_ious"]["used"]["suppressed"]
    assert both["ce_ious"]["used"]["true_negative"] is None
    # S3: the parent's ce_ious dimension is suppressed too (else parent - visible - missing reveals it)
    assert all(row["suppressed"] for row in table[PARENT_GROUP]["ce_ious"].values())
    assert not table["ct_disappeared_mri_visible"]["ce_ious"]["not_used"]["suppressed"]
    # zeros are written, not suppressed
    assert both["baseline_size"]["lt_10_mm"] == {"true_negative": 0, "residual": 0, "unevaluable": 0,
                                                 "suppressed": False}
    assert table[PARENT_GROUP]["all"]["all"]["true_negative"] == 15
    for value in _counts(table):
        assert value is None or value == 0 or value >= 5
    assert set(table) == {PARENT_GROUP, *CHILD_GROUPS}


def test_suppressed_all_row_suppresses_the_group_and_parent():
    rows = [(i, i, "ct_and_mri_disappeared", "true_negative", True, True, 5.0) for i in range(20)]
    rows += [(20 + i, 20 + i, "ct_disappeared_mri_visible", "residual", True, True, 5.0) for i in range(2)]
    table = suppress_npv(npv_counts(_lesions(rows)), 5)
    assert all(r["suppressed"] for dims in table["ct_disappeared_mri_visible"].values() for r in dims.values())
    assert all(r["suppressed"] for dims in table[PARENT_GROUP].values() for r in dims.values())
    assert not table["ct_and_mri_disappeared"]["all"]["all"]["suppressed"]


def test_risk_table_suppression_covers_the_continuing_count():
    # month 1: 8 at risk, 5 events, 0 censored are all publishable, but 3 continue into month 2; with
    # month 2 published too, 3 = at_risk(2) would be revealed. S1 on the continuing count stops at month 1.
    rows = suppress_risk_table(monthly_risk_table([1.5] * 5 + [2.5] * 3, [1] * 8), 5)
    assert [r["suppressed"] for r in rows] == [False, True, True]
    assert rows[0] == {"month": 0, "at_risk": 8, "events": 0, "censored": 0, "suppressed": False}
    assert suppress_risk_table(monthly_risk_table([1.5] * 5 + [2.5] * 5, [1] * 10), 5)[1]["suppressed"] is False


def test_site_aggregates_have_no_patient_rows_and_metadata():
    lesions = _lesions([(i, 100 + i, "ct_and_mri_disappeared", "true_negative", False, True, 12.0)
                        for i in range(6)])
    patients = pd.DataFrame({"person_id": range(10), "strategy": ["all_dlm_removed"] * 5 + ["dlm_left_behind"] * 5,
                             "rfs_months": np.arange(10) + 0.5, "rfs_event": [1, 0] * 5,
                             "os_months": np.arange(10) + 0.5, "os_event": [0] * 10})
    data = site_aggregates(lesions, patients, site_id="x", min_cell=1)
    assert data["format_version"] == 1 and data["site_id"] == "x" and data["min_cell"] == 1
    assert data["software_version"] and data["export_date"]
    assert data["npv"]["ct_and_mri_disappeared"]["baseline_size"]["10_to_19_mm"]["true_negative"] == 6
    assert data["survival"]["overall_survival"]["cox"]["log_hr"] is None       # no events: not estimable
    json.dumps(data, allow_nan=False)
    with pytest.raises(ValueError):
        site_aggregates(lesions, patients, min_cell=0)


def test_pool_sites_rejects_other_files():
    with pytest.raises(ValueError):
        pool_sites([{"format": "something else"}])
    with pytest.raises(ValueError):
        pool_sites([])


# --- end to end: two registries, export, pool ----------------------------------------------------------

@pytest.fixture(scope="module")
def two_registries(tmp_path_factory):
    from etl.pipeline import RunSettings, run
    from etl.synth import SynthParams, write_cohort

    sites = []
    for name, (patients, seed) in {"north": (60, 21), "south": (50, 22)}.items():
        base = tmp_path_factory.mktemp(name)
        source = base / "cohort"
        write_cohort(source, patients=patients, seed=seed, params=SynthParams())
        url = f"sqlite:///{base / 'registry.sqlite'}"
        run(RunSettings(source=str(source), registry_url=url, out_dir=base / "out", show_progress=False))
        sites.append((name, source, url, base))
    return sites


def _fhir_ids(source):
    ids = set()
    for path in source.glob("*.ndjson"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids.add(json.loads(line)["id"])
    return ids


def _patients(url):
    from etl.pipeline import read_cohort_frames
    from etl.registry import open_registry

    registry = open_registry(url)
    try:
        _, patients = read_cohort_frames(registry)
    finally:
        registry.engine.dispose()
    return patients


def test_export_and_pool_end_to_end(two_registries, tmp_path):
    import sqlalchemy as sa

    from etl.analysis.survival import ARMS, ENDPOINTS, endpoint_data
    from etl.cli import main

    files_default, files_all = [], []
    for name, source, url, _ in two_registries:
        out5, out1 = tmp_path / f"{name}.json", tmp_path / f"{name}_min1.json"
        assert main(["export-aggregates", "--registry", url, "--out", str(out5), "--site-id", name]) == 0
        assert main(["export-aggregates", "--registry", url, "--out", str(out1), "--site-id", name,
                     "--min-cell", "1"]) == 0
        files_default.append(out5)
        files_all.append(out1)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            pseudonyms = {r[0] for r in conn.execute(sa.text("SELECT person_source_value FROM person"))}
        engine.dispose()
        identifiers = pseudonyms | _fhir_ids(source)
        assert len(pseudonyms) > 10 and len(identifiers) > 100
        for path in (out5, out1):
            text = path.read_text(encoding="utf-8")
            leaked = [i for i in identifiers if i and i in text]
            assert leaked == []
        data = json.loads(out5.read_text(encoding="utf-8"))
        assert data["min_cell"] == 5 and data["site_id"] == name
        counts = list(_counts(data))
        assert counts and not [c for c in counts if c is not None and 1 <= c <= 4]
        suppressed = [r for r in _counts_rows(data) if r["suppressed"]]
        assert suppressed and all(r[k] is None for r in suppressed for k in r if k in COUNT_KEYS)

    # default suppression: pooling runs and says what it left out
    assert main(["pool", *map(str, files_default), "--out", str(tmp_path / "pooled5")]) == 0
    pooled5 = json.loads((tmp_path / "pooled5" / "pooled.json").read_text(encoding="utf-8"))
    assert (tmp_path / "pooled5" / "pooled.md").read_text(encoding="utf-8").startswith("# Pooled DLM results")
    rows5 = [row for dims in pooled5["npv"].values() for cats in dims.values() for row in cats.values()]
    assert any(e["reason"] == "suppressed" for row in rows5 for e in row["sites_excluded"])

    # min cell 1: nothing suppressed; the pooled KM equals lifelines on the union of both registries' patients
    assert main(["pool", *map(str, files_all), "--out", str(tmp_path / "pooled1")]) == 0
    pooled = json.loads((tmp_path / "pooled1" / "pooled.json").read_text(encoding="utf-8"))
    assert [s["site"] for s in pooled["sites"]] == ["north", "south"]
    assert set(pooled) >= {"sites", "methods", "npv", "survival"}
    assert set(pooled["npv"]) == {PARENT_GROUP, *CHILD_GROUPS}
    assert set(pooled["npv"]["ct_and_mri_disappeared"]) == {"all", "ce_ious", "mri_protocol", "baseline_size",
                                                            "chemo_regimen", "chemo_targeted_agent"}
    union = pd.concat([_patients(url) for _, _, url, _ in two_registries], ignore_index=True)
    compared = 0
    for endpoint in ENDPOINTS:
        data = endpoint_data(union, endpoint)
        cox = pooled["survival"][endpoint]["cox"]
        assert set(cox) >= {"fixed", "random", "tau2", "i2", "sites_included", "sites_excluded"}
        for arm in ARMS:
            km = pooled["survival"][endpoint]["arms"][arm]
            assert km["truncated_at_month"] is None
            rows = data[data["arm"] == arm]
            by_month = {r["month"]: r for r in km["months"]}
            if 12 not in by_month:
                continue
            fitter = _lifelines_km(rows["duration"], rows["event"])
            assert by_month[12]["survival"] == pytest.approx(
                float(fitter.survival_function_at_times(12).iloc[0]), abs=1e-12)
            assert by_month[12]["at_risk"] == int(np.sum(np.floor(rows["duration"]) >= 12))
            compared += 1
    assert compared >= 2
    # pooled NPV counts equal the two registries' results.json counts summed
    group = pooled["npv"]["ct_and_mri_disappeared"]["all"]["all"]
    results = [json.loads((base / "out" / "results.json").read_text())["npv"]["ct_and_mri_disappeared"]
               for _, _, _, base in two_registries]
    assert group["true_negative"] == sum(r["true_negative"] for r in results)
    assert group["residual"] == sum(r["residual"] for r in results)


def _counts_rows(node):
    """Every row dict (one with a `suppressed` flag) in a site file."""
    if isinstance(node, dict):
        if "suppressed" in node:
            yield node
        else:
            for value in node.values():
                yield from _counts_rows(value)
    elif isinstance(node, list):
        for item in node:
            yield from _counts_rows(item)


def test_cli_errors(tmp_path):
    from etl.cli import EXIT_BAD_INPUT, main

    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert main(["pool", str(bad), "--out", str(tmp_path / "p")]) == EXIT_BAD_INPUT
    assert main(["export-aggregates", "--registry", f"sqlite:///{tmp_path / 'none.sqlite'}",
                 "--out", str(tmp_path / "x.json")]) == EXIT_BAD_INPUT
