"""Machinery of scripts/npv_coverage.py on a few cohorts (the 500-cohort run is docs/npv_coverage.md, not a test)."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from scipy import special

from tests.conftest import REPO

_SPEC = importlib.util.spec_from_file_location("npv_coverage", REPO / "scripts" / "npv_coverage.py")
npv_coverage = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(npv_coverage)


def test_sigma_zero_truth_is_expit_mu():
    assert npv_coverage.true_npv(0.7, 0.0) == pytest.approx(float(special.expit(0.7)), abs=1e-15)
    # the quadrature path agrees in the limit too
    assert npv_coverage.true_npv(0.7, 1e-9) == pytest.approx(float(special.expit(0.7)), abs=1e-12)


@pytest.mark.parametrize("mu, sigma", [(0.6, 0.5), (0.6, 1.0), (-1.0, 2.0)])
def test_quadrature_truth_matches_brute_force_monte_carlo(mu, sigma):
    draws = special.expit(mu + sigma * np.random.default_rng(7).standard_normal(1_000_000))
    tolerance = 5 * draws.std() / math.sqrt(draws.size)
    assert abs(npv_coverage.true_npv(mu, sigma) - draws.mean()) < tolerance


def test_lesion_weighted_truth_equals_mean_expit_when_counts_are_independent():
    """The target is expected true negatives over expected lesions, not a patient-level mean."""
    mu, sigma = npv_coverage.mu_for_npv(0.625, 1.0), 1.0
    lesions, negatives = npv_coverage.draw_cohorts(np.random.default_rng(3), 1, 400_000, mu, sigma, 152 / 45)
    assert negatives.sum() / lesions.sum() == pytest.approx(0.625, abs=0.004)


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0])
def test_mu_is_solved_for_the_dream_npv(sigma):
    npv = npv_coverage.dream_design()["npv"]
    assert npv == 0.625
    assert npv_coverage.true_npv(npv_coverage.mu_for_npv(npv, sigma), sigma) == pytest.approx(npv, abs=1e-10)


def test_cell_results_are_well_formed_and_reproducible():
    first = npv_coverage.simulate_cell(1.0, 45, 20, seed=11, boot=50)
    again = npv_coverage.simulate_cell(1.0, 45, 20, seed=11, boot=50)
    assert first == again
    assert first["truth"] == pytest.approx(0.625, abs=1e-10)
    assert set(first["methods"]) == set(npv_coverage.METHODS)
    for stats in first["methods"].values():
        assert 0.0 <= stats["coverage"] <= 1.0
        assert stats["mc_se"] == pytest.approx(math.sqrt(stats["coverage"] * (1 - stats["coverage"]) / 20))
        assert 0 < stats["mean_width"] < 1
        misses = stats["lower_misses"] + stats["upper_misses"] + stats["undefined"]
        assert misses == round(20 * (1 - stats["coverage"]))


def test_undefined_cluster_interval_counts_as_not_covering():
    """NPV near 1 in tiny cohorts: some cohorts have every lesion negative, so cluster_logit is None."""
    result = npv_coverage.simulate_cell(0.0, 3, 20, seed=5, npv=0.97, lesions_per_patient=2.0, boot=0)
    cluster = result["methods"]["cluster"]
    assert cluster["undefined"] > 0
    assert cluster["coverage"] <= 1 - cluster["undefined"] / 20
    assert "bootstrap" not in result["methods"]


def test_main_writes_the_markdown_table(tmp_path, capsys):
    out = tmp_path / "coverage.md"
    assert npv_coverage.main(["--cohorts", "5", "--boot", "0", "--sigmas", "0", "--patients", "10",
                              "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "--cohorts 5 --seed" in text and "| 0 | 10 |" in text
    assert text in capsys.readouterr().out
