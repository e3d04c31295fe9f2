"""Tests of the registry's figures against DREAM's published ones.

Why: "DREAM's value lies in our interval" says little with a small registry; a p-value
against DREAM's figure is what a reader asks next. DREAM publishes only rounded
estimates and 95% intervals, so each test uses what can be recovered from those: the NPV
is tested exactly against DREAM's estimate as a fixed value (DREAM's own sampling error
ignored, which makes the test anti-conservative), and a hazard ratio is compared on the
log scale with DREAM's standard error recovered from its 95% interval.
All functions return JSON-ready values (Python floats, None where undefined).
"""
import math

from scipy import stats

from ._convert import finite_or_none

BINOMIAL_METHOD = "exact binomial, two-sided"
LOG_HR_METHOD = "z test of the difference in log HR (independent estimates, SE from 95% CI)"


def _z(level):
    return float(stats.norm.ppf(1 - (1 - level) / 2))


def binomial_test_vs(successes, trials, p0):
    """Exact two-sided binomial test of an observed proportion against a fixed p0.

    The two-sided p-value is scipy's (:func:`scipy.stats.binomtest`, as R's
    ``binom.test``): the summed probability under Binomial(trials, p0) of every outcome at
    most as likely as the one observed (pmf <= pmf(observed) * (1 + 1e-7)). It is not twice
    the smaller tail, so with p0 != 0.5 the two tails contribute unequally.

    Parameters
    ----------
    successes : int
        Observed successes x, 0 <= x <= trials (for the NPV: true negatives).
    trials : int
        Number of trials n >= 0 (for the NPV: true negatives + residuals).
    p0 : float
        Proportion under the null hypothesis, in [0, 1].

    Returns
    -------
    dict
        ``method`` ("exact binomial, two-sided"), ``p0``, ``successes``, ``trials`` and
        ``p_value`` (None when trials is 0: no data, no test).

    Raises
    ------
    ValueError
        When p0 lies outside [0, 1] or the counts are impossible.
    """
    x, n, p0 = int(successes), int(trials), float(p0)
    if not 0 <= p0 <= 1:
        raise ValueError(f"p0 must lie in [0, 1], got {p0}")
    if not 0 <= x <= n:
        raise ValueError(f"need 0 <= successes <= trials, got {x} of {n}")
    p_value = None if n == 0 else finite_or_none(stats.binomtest(x, n, p0).pvalue)
    return {"method": BINOMIAL_METHOD, "p0": p0, "successes": x, "trials": n,
            "p_value": p_value}


def se_from_ci(lower, upper, level=0.95):
    """Standard error of a log ratio implied by a ratio's confidence interval.

    For a Wald interval exp(log r +/- z * se): se = (log upper - log lower) / (2 z), with
    z the normal quantile of the level (1.959964 for 95%). Published bounds are rounded,
    so the result is approximate (an HR of 0.5 (0.25-1.00) gives se = 0.3537; with the
    upper bound published as 0.99 or 1.01 it would be 0.3511 or 0.3562).

    Parameters
    ----------
    lower, upper : float or None
        Bounds of the interval of a ratio (HR, OR, ...); a None bound (not estimable)
        gives None.
    level : float
        Confidence level of the interval.

    Returns
    -------
    float or None

    Raises
    ------
    ValueError
        When a bound is not positive or lower > upper.
    """
    if lower is None or upper is None:
        return None
    lower, upper = float(lower), float(upper)
    if lower <= 0 or upper < lower:
        raise ValueError(f"need 0 < lower <= upper, got [{lower}, {upper}]")
    return (math.log(upper) - math.log(lower)) / (2 * _z(level))


def log_hr_difference_test(hr1, se1_or_ci1, hr2, ci2, level=0.95):
    """Test whether two independent hazard ratios differ (z test on the log scale).

    Altman & Bland, "Interaction revisited: the difference between two estimates", BMJ
    2003;326:219: d = log hr1 - log hr2, se(d) = sqrt(se1^2 + se2^2), z = d / se(d),
    two-sided p = 2 * (1 - Phi(|z|)); the ratio of hazard ratios hr1 / hr2 = exp(d) has the
    interval exp(d +/- z_level * se(d)). Assumes the two estimates come from different
    patients (a site that also enrolled in DREAM would share some).

    Parameters
    ----------
    hr1 : float or None
        Our hazard ratio.
    se1_or_ci1 : float, [lower, upper] or None
        Standard error of log hr1 (from the Cox fit), or its interval at ``level``.
    hr2 : float or None
        The other (DREAM's) hazard ratio.
    ci2 : [lower, upper] or None
        hr2's interval at ``level``; its SE is recovered with :func:`se_from_ci`.
    level : float
        Confidence level of the given intervals and of ``ratio_ci95``'s width (0.95 gives
        the 95% interval the field name promises).

    Returns
    -------
    dict
        ``method``, ``difference_log_hr``, ``se``, ``z``, ``p_value``, ``ratio_of_hr``
        (hr1 / hr2) and ``ratio_ci95`` ([lower, upper]); all but ``method`` None when an
        input is missing or the combined SE is 0.
    """
    result = {"method": LOG_HR_METHOD, "difference_log_hr": None, "se": None, "z": None,
              "p_value": None, "ratio_of_hr": None, "ratio_ci95": None}
    if isinstance(se1_or_ci1, (list, tuple)):
        se1 = se_from_ci(*se1_or_ci1, level=level)
    else:
        se1 = finite_or_none(se1_or_ci1)
    se2 = None if ci2 is None else se_from_ci(*ci2, level=level)
    if hr1 is None or hr2 is None or se1 is None or se2 is None:
        return result
    if hr1 <= 0 or hr2 <= 0 or se1 < 0:
        raise ValueError(f"need positive hazard ratios and se >= 0, got {hr1}, {hr2}, {se1}")
    se = math.hypot(se1, se2)
    if se == 0:
        return result
    difference = math.log(hr1) - math.log(hr2)
    z = difference / se
    half_width = _z(level) * se
    return {
        **result,
        "difference_log_hr": difference,
        "se": se,
        "z": z,
        "p_value": float(2 * stats.norm.sf(abs(z))),
        "ratio_of_hr": math.exp(difference),
        "ratio_ci95": [math.exp(difference - half_width), math.exp(difference + half_width)],
    }
