"""NPV counts and the three proportion intervals (etl.analysis.npv, etl.analysis.intervals)."""
import math

import pandas as pd
import pytest
from scipy import stats

from etl.analysis.intervals import clopper_pearson, cluster_logit, wilson
from etl.analysis.npv import CE_IOUS_KEY, npv_summary

Z = stats.norm.ppf(0.975)


# --- Clopper-Pearson -------------------------------------------------------------------

def test_clopper_pearson_zero_successes_closed_form():
    """x = 0: lower = 0 and upper = 1 - (alpha/2)**(1/n).

    Source: Clopper & Pearson (1934), Biometrika 26:404; closed form for the boundary
    cases as given by Brown, Cai & DasGupta (2001), Statistical Science 16:101, section 2.
    For n = 10: 1 - 0.025**0.1 = 0.30850...
    """
    lower, upper = clopper_pearson(0, 10)
    assert lower == 0.0
    assert upper == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)
    assert upper == pytest.approx(0.30850, abs=1e-5)


def test_clopper_pearson_all_successes_closed_form():
    """x = n: lower = (alpha/2)**(1/n) (same sources), upper = 1. For n = 10: 0.69150..."""
    lower, upper = clopper_pearson(10, 10)
    assert lower == pytest.approx(0.025 ** (1 / 10), abs=1e-12)
    assert upper == 1.0


def test_clopper_pearson_matches_scipy_binomtest():
    """Interior case against scipy.stats.binomtest(7, 20).proportion_ci(method='exact')."""
    expected = stats.binomtest(7, 20).proportion_ci(confidence_level=0.95, method="exact")
    lower, upper = clopper_pearson(7, 20)
    assert lower == pytest.approx(expected.low, abs=1e-10)
    assert upper == pytest.approx(expected.high, abs=1e-10)


def test_clopper_pearson_undefined_and_invalid():
    assert clopper_pearson(0, 0) is None
    with pytest.raises(ValueError):
        clopper_pearson(11, 10)


# --- Wilson ----------------------------------------------------------------------------

def test_wilson_hand_computed():
    """x = 8, n = 10, z = 1.959964 (Wilson 1927, JASA 22:209):

    p = 0.8, z**2 = 3.841459
    centre = (p + z**2/(2n)) / (1 + z**2/n) = (0.8 + 0.192073) / 1.384146 = 0.716740
    half   = z / (1 + z**2/n) * sqrt(p(1-p)/n + z**2/(4n**2))
           = 1.416010 * sqrt(0.016 + 0.009604) = 1.416010 * 0.160011 = 0.226577
    interval = 0.716740 -+ 0.226577 = (0.490163, 0.943317)
    """
    lower, upper = wilson(8, 10)
    assert lower == pytest.approx(0.490163, abs=2e-6)
    assert upper == pytest.approx(0.943317, abs=2e-6)
    assert wilson(0, 0) is None


def test_wilson_stays_inside_unit_interval_at_boundaries():
    lower, upper = wilson(0, 5)
    assert lower == 0.0 and 0 < upper < 1
    lower, upper = wilson(5, 5)
    assert 0 < lower < 1 and upper == 1.0


# --- cluster interval ------------------------------------------------------------------

def test_cluster_interval_hand_computed():
    """Patients A: [1, 1, 0], B: [1], C: [0, 0].

    N = 6, p = 3/6 = 0.5, G = 3
    per-patient score sum_j (y - p): A = 0.5 + 0.5 - 0.5 = 0.5, B = 0.5, C = -1.0
    sum of squares = 0.25 + 0.25 + 1.0 = 1.5
    (N p (1-p))**2 = (6 * 0.25)**2 = 2.25
    var(logit p) = G/(G-1) * 1.5 / 2.25 = 1.5 * 1.5 / 2.25 = 1.0, se = 1
    CI = expit(0 -+ 1.959964) = (0.123471, 0.876529)
    """
    lower, upper = cluster_logit([1, 1, 0, 1, 0, 0], ["A", "A", "A", "B", "C", "C"])
    assert lower == pytest.approx(1 / (1 + math.exp(Z)), abs=1e-9)
    assert upper == pytest.approx(1 / (1 + math.exp(-Z)), abs=1e-9)
    assert lower == pytest.approx(0.123471, abs=1e-6)


def test_cluster_interval_one_lesion_per_patient_is_wald_logit_with_small_sample_factor():
    y = [1, 1, 1, 0, 0, 1, 1, 0]
    n = len(y)
    p = sum(y) / n
    se = math.sqrt(n / (n - 1) / (n * p * (1 - p)))
    centre = math.log(p / (1 - p))
    expected = [1 / (1 + math.exp(-(centre + s * Z * se))) for s in (-1, 1)]
    assert cluster_logit(y, list(range(n))) == pytest.approx(expected, abs=1e-12)


def test_cluster_interval_widens_for_perfectly_correlated_lesions():
    """Each patient has three lesions with the same outcome: the data hold no more
    information than one lesion per patient, so the interval must equal that one and be
    wider than if the 3n lesions were independent."""
    per_patient = [1, 1, 1, 0, 0, 1, 1, 0, 1, 1]
    y = [v for v in per_patient for _ in range(3)]
    patients = [i for i in range(len(per_patient)) for _ in range(3)]
    clustered = cluster_logit(y, patients)
    independent = cluster_logit(y, list(range(len(y))))
    single = cluster_logit(per_patient, list(range(len(per_patient))))
    assert clustered == pytest.approx(single, abs=1e-12)
    assert clustered[1] - clustered[0] > 1.5 * (independent[1] - independent[0])


@pytest.mark.parametrize(
    "y, clusters",
    [([], []), ([1, 1, 1], [1, 2, 3]), ([0, 0], [1, 2]), ([1, 0, 1], [7, 7, 7])],
    ids=["empty", "p=1", "p=0", "one patient"],
)
def test_cluster_interval_undefined_cases_return_none(y, clusters):
    assert cluster_logit(y, clusters) is None


# --- NPV per group ---------------------------------------------------------------------

def _lesions():
    rows = [
        # person, lesion, group, outcome, ce_ious
        (1, 1, "ct_and_mri_disappeared", "true_negative", True),
        (1, 2, "ct_and_mri_disappeared", "residual", True),
        (1, 3, "not_disappeared", None, True),
        (2, 4, "ct_and_mri_disappeared", "unevaluable", False),
        (2, 5, "ct_disappeared_mri_visible", "true_negative", False),
        (2, 6, "ct_and_mri_disappeared", "true_negative", False),
        (3, 7, "ct_disappeared_mri_missing", "residual", None),
        (3, 8, "ct_disappeared_mri_visible", "residual", False),
        (4, 9, "ct_and_mri_disappeared", None, False),
    ]
    return pd.DataFrame(rows, columns=["person_id", "lesion_id", "dlm_group", "outcome", "ce_ious"])


def test_npv_primary_group_leaves_unevaluable_out_of_denominator():
    both = npv_summary(_lesions())["ct_and_mri_disappeared"]
    # lesions 1, 2, 4, 6, 9; lesion 9 has no outcome and counts as unevaluable
    assert (both["lesions"], both["patients"]) == (5, 3)
    assert (both["true_negative"], both["residual"], both["unevaluable"]) == (2, 1, 2)
    assert both["estimate"] == pytest.approx(2 / 3)
    assert both["ci95"] == pytest.approx(list(clopper_pearson(2, 3)))
    assert both["ci95_wilson"] == pytest.approx(list(wilson(2, 3)))
    # evaluable lesions: patient 1 -> [1, 0], patient 2 -> [1]
    assert both["ci95_cluster"] == pytest.approx(list(cluster_logit([1, 0, 1], [1, 1, 2])))


def test_npv_ct_disappeared_is_union_of_ct_groups():
    summary = npv_summary(_lesions())
    union = summary["ct_disappeared"]
    assert (union["lesions"], union["patients"]) == (8, 4)
    assert (union["true_negative"], union["residual"], union["unevaluable"]) == (3, 3, 2)
    assert union["estimate"] == 0.5
    visible = summary["ct_disappeared_mri_visible"]
    assert (visible["lesions"], visible["true_negative"], visible["residual"]) == (2, 1, 1)


def test_npv_ce_ious_subgroup_only_counts_ce_ious_true():
    ce = npv_summary(_lesions())[CE_IOUS_KEY]
    assert (ce["lesions"], ce["patients"], ce["true_negative"], ce["residual"]) == (2, 1, 1, 1)
    assert ce["estimate"] == 0.5
    assert ce["ci95_cluster"] is None  # one patient: no between-patient variance


def test_npv_key_matches_reference_json():
    from etl.analysis.reference import load_dream_reference

    assert CE_IOUS_KEY in load_dream_reference()["npv"]


def test_npv_group_without_evaluable_lesions():
    lesions = _lesions()
    lesions = lesions[lesions["dlm_group"] != "ct_disappeared_mri_visible"]
    visible = npv_summary(lesions)["ct_disappeared_mri_visible"]
    assert visible["lesions"] == 0 and visible["estimate"] is None
    assert visible["ci95"] is None and visible["ci95_wilson"] is None
    assert visible["ci95_cluster"] is None


def test_npv_rejects_unknown_outcome():
    lesions = _lesions()
    lesions.loc[0, "outcome"] = "Residual"
    with pytest.raises(ValueError, match="Residual"):
        npv_summary(lesions)
