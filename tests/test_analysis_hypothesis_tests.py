"""Tests against a fixed value or another estimate (etl.analysis.hypothesis_tests).

Reference values are hand-computed (arithmetic in each docstring) or produced by scipy in
the test itself (scipy.stats.binom.pmf / binomtest, scipy.stats.norm).
"""
import json
import math

import pytest
from scipy import stats

from etl.analysis.hypothesis_tests import binomial_test_vs, log_hr_difference_test, se_from_ci

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


def test_z95_constant_is_scipys():
    assert stats.norm.ppf(0.975) == pytest.approx(Z95, rel=1e-15)


def test_binomial_hand_computed():
    """Binomial(4, 5/8), q = 3/8; pmf(k) = C(4, k) (5/8)^k (3/8)^(4 - k):

    k=0: 1 * 1          * 0.052734375*0.375 = 0.019775390625
    k=1: 4 * 0.625      * 0.052734375       = 0.1318359375
    k=2: 6 * 0.390625   * 0.140625          = 0.32958984375
    k=3: 4 * 0.244140625 * 0.375            = 0.3662109375
    k=4: 1 * 0.152587890625                 = 0.152587890625
    Observed 1: outcomes at most as likely are 0, 1 -> p = 0.151611328125 (4 is more likely).
    Observed 4: outcomes 0, 1, 4 -> p = 0.30419921875, not 2 * P(X >= 4) = 0.30517578125.
    Binomial(3, 1/2), observed 0: outcomes 0 and 3 (1/8 each) -> p = 0.25.
    """
    assert binomial_test_vs(1, 4, 5 / 8)["p_value"] == pytest.approx(0.151611328125, rel=1e-12)
    assert binomial_test_vs(4, 4, 5 / 8)["p_value"] == pytest.approx(0.30419921875, rel=1e-12)
    assert binomial_test_vs(0, 3, 0.5)["p_value"] == pytest.approx(0.25, rel=1e-12)
    # the mode itself: every outcome is at most as likely -> p = 1
    assert binomial_test_vs(3, 4, 5 / 8)["p_value"] == pytest.approx(1.0, abs=1e-12)


def test_binomial_shape_is_json_ready():
    result = binomial_test_vs(5, 8, 0.625)  # observed = expected: p = 1
    assert result == {"method": "exact binomial, two-sided", "p0": 0.625, "successes": 5,
                      "trials": 8, "p_value": 1.0}
    assert type(result["p_value"]) is float
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize("k, n, p0", [(50, 150, 0.6), (120, 150, 0.6), (10, 12, 0.74),
                                      (0, 5, 0.3), (7, 30, 0.5), (30, 30, 0.9)])
def test_binomial_equals_sum_of_outcomes_at_most_as_likely(k, n, p0):
    """p = sum of binom.pmf(j) over j with pmf(j) <= pmf(k) * (1 + 1e-7), computed here by brute force."""
    observed = stats.binom.pmf(k, n, p0)
    expected = sum(stats.binom.pmf(j, n, p0) for j in range(n + 1)
                   if stats.binom.pmf(j, n, p0) <= observed * (1 + 1e-7))
    result = binomial_test_vs(k, n, p0)["p_value"]
    assert result == pytest.approx(min(1.0, expected), rel=1e-9)
    assert result == stats.binomtest(k, n, p0).pvalue


def test_binomial_without_trials_has_no_p_and_bad_input_raises():
    assert binomial_test_vs(0, 0, 0.625)["p_value"] is None
    with pytest.raises(ValueError):
        binomial_test_vs(5, 4, 0.5)
    with pytest.raises(ValueError):
        binomial_test_vs(-1, 4, 0.5)
    with pytest.raises(ValueError):
        binomial_test_vs(1, 4, 1.5)


def test_se_from_ci_hand_computed():
    """[0.5, 2]: (ln 2 - ln 0.5) / (2 * 1.959964) = 1.386294 / 3.919928 = 0.353653.

    [exp(-1.959964), exp(1.959964)]: 2 * 1.959964 / (2 * 1.959964) = 1.
    [e^-1, e] at 90%: z = norm.ppf(0.95) = 1.644854 -> 2 / 3.289707 = 0.607957.
    """
    assert se_from_ci(0.5, 2.0) == pytest.approx(0.353653, abs=1e-6)
    assert se_from_ci(math.exp(-Z95), math.exp(Z95)) == pytest.approx(1.0, rel=1e-12)
    assert se_from_ci(math.exp(-1), math.e, level=0.90) == pytest.approx(0.607957, abs=1e-6)


def test_se_from_ci_open_or_invalid_interval():
    assert se_from_ci(0.5, None) is None and se_from_ci(None, 2.0) is None
    with pytest.raises(ValueError):
        se_from_ci(0.0, 2.0)
    with pytest.raises(ValueError):
        se_from_ci(2.0, 0.5)


def test_log_hr_difference_hand_computed():
    """hr1 = 2 with se(log hr1) = 0.3; hr2 = 1 with 95% CI exp(+/-1.959964 * 0.4) -> se2 = 0.4.

    d = ln 2 - ln 1 = 0.693147; se = sqrt(0.3^2 + 0.4^2) = 0.5; z = 0.693147 / 0.5 = 1.386294;
    p = 2 * (1 - Phi(1.386294)) = 0.165657; ratio = exp(d) = 2;
    ratio CI = 2 * exp(-/+ 1.959964 * 0.5) = 2 * [0.375318, 2.664408] = [0.750636, 5.328817].
    """
    ci2 = [math.exp(-Z95 * 0.4), math.exp(Z95 * 0.4)]
    result = log_hr_difference_test(2.0, 0.3, 1.0, ci2)
    assert result["difference_log_hr"] == pytest.approx(0.693147, abs=1e-6)
    assert result["se"] == pytest.approx(0.5, rel=1e-12)
    assert result["z"] == pytest.approx(1.386294, abs=1e-6)
    assert result["p_value"] == pytest.approx(0.165657, abs=1e-6)
    assert result["p_value"] == pytest.approx(2 * stats.norm.sf(math.log(2) / 0.5), rel=1e-12)
    assert result["ratio_of_hr"] == pytest.approx(2.0, rel=1e-12)
    assert result["ratio_ci95"] == pytest.approx([0.750636, 5.328817], abs=1e-6)
    assert result["method"].startswith("z test")
    json.dumps(result, allow_nan=False)


def test_log_hr_difference_accepts_an_interval_for_the_first_hr_and_is_antisymmetric():
    ci1 = [2.0 * math.exp(-Z95 * 0.3), 2.0 * math.exp(Z95 * 0.3)]
    ci2 = [math.exp(-Z95 * 0.4), math.exp(Z95 * 0.4)]
    by_se = log_hr_difference_test(2.0, 0.3, 1.0, ci2)
    by_ci = log_hr_difference_test(2.0, ci1, 1.0, ci2)
    assert by_ci["se"] == pytest.approx(by_se["se"], rel=1e-12)
    assert by_ci["p_value"] == pytest.approx(by_se["p_value"], rel=1e-12)
    swapped = log_hr_difference_test(1.0, ci2, 2.0, ci1)
    assert swapped["z"] == pytest.approx(-by_se["z"], rel=1e-12)
    assert swapped["p_value"] == pytest.approx(by_se["p_value"], rel=1e-12)
    assert swapped["ratio_of_hr"] == pytest.approx(0.5, rel=1e-12)


def test_equal_hrs_give_p_one():
    result = log_hr_difference_test(0.8, 0.5, 0.8, [0.4, 1.6])
    assert result["z"] == 0.0 and result["p_value"] == pytest.approx(1.0)


def test_log_hr_difference_missing_input_gives_nones():
    for args in [(None, 0.3, 1.0, [0.5, 2.0]), (2.0, None, 1.0, [0.5, 2.0]),
                 (2.0, 0.3, 1.0, None), (2.0, 0.3, 1.0, [0.5, None]), (2.0, 0.3, None, [0.5, 2.0])]:
        result = log_hr_difference_test(*args)
        assert result["p_value"] is None and result["ratio_ci95"] is None
        assert set(result) == {"method", "difference_log_hr", "se", "z", "p_value", "ratio_of_hr",
                               "ratio_ci95"}
