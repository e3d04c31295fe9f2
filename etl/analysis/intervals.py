"""Confidence intervals for a proportion such as the NPV.

Why three: Clopper-Pearson is the exact interval DREAM-style reports quote; Wilson is the
usual score interval, less conservative; the cluster interval widens (or narrows) both for
several lesions from one patient, which are not independent observations.
All functions return ``(lower, upper)`` as Python floats, or None when undefined.
"""
import math

import numpy as np
from scipy import stats


def _z(alpha):
    return float(stats.norm.ppf(1 - alpha / 2))


def clopper_pearson(successes, trials, alpha=0.05):
    """Exact (Clopper-Pearson) interval from beta quantiles.

    Parameters
    ----------
    successes : int
        Number of successes x (0 <= x <= n).
    trials : int
        Number of trials n.
    alpha : float
        1 - confidence level.

    Returns
    -------
    tuple of float or None
        ``(lower, upper)``; the lower bound is 0 when x = 0 and the upper 1 when x = n.
        None when n = 0.
    """
    x, n = int(successes), int(trials)
    if n == 0:
        return None
    if not 0 <= x <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {x}")
    lower = 0.0 if x == 0 else float(stats.beta.ppf(alpha / 2, x, n - x + 1))
    upper = 1.0 if x == n else float(stats.beta.ppf(1 - alpha / 2, x + 1, n - x))
    return lower, upper


def wilson(successes, trials, alpha=0.05):
    """Wilson score interval.

    Parameters
    ----------
    successes : int
        Number of successes x.
    trials : int
        Number of trials n.
    alpha : float
        1 - confidence level.

    Returns
    -------
    tuple of float or None
        ``(centre - half, centre + half)`` with centre = (p + z²/2n) / (1 + z²/n) and
        half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²); None when n = 0.
    """
    x, n = int(successes), int(trials)
    if n == 0:
        return None
    z = _z(alpha)
    p = x / n
    shrink = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_logit(outcomes, clusters, alpha=0.05):
    """Cluster-robust interval: intercept-only logistic GEE, independence working correlation.

    With p = sum(y) / N, the sandwich variance of logit(p) is
    ``G/(G-1) * sum_i (sum_j (y_ij - p))**2 / (N p (1-p))**2`` (G clusters, small-sample
    factor G/(G-1)); the interval is ``expit(logit(p) ± z * se)``. With one observation per
    cluster it reduces to the Wald logit interval times the G/(G-1) factor.

    Parameters
    ----------
    outcomes : array-like of 0/1
        One entry per observation (lesion): 1 = success (true negative).
    clusters : array-like
        Cluster label (patient) per observation, same length as ``outcomes``.
    alpha : float
        1 - confidence level.

    Returns
    -------
    tuple of float or None
        ``(lower, upper)``. None when there are no observations, fewer than 2 clusters
        (no between-cluster variance can be estimated), or p is 0 or 1 (logit undefined;
        read the exact interval instead). The interval collapses to a point when every
        cluster's own proportion equals p: that is what the sandwich estimator says.
    """
    y = np.asarray(outcomes, dtype=float)
    groups = np.asarray(clusters)
    if y.shape != groups.shape:
        raise ValueError("outcomes and clusters must have the same length")
    n = y.size
    if n == 0:
        return None
    labels, index = np.unique(groups, return_inverse=True)
    g = labels.size
    p = y.mean()
    if g < 2 or p in (0.0, 1.0):
        return None
    cluster_scores = np.bincount(index, weights=y - p, minlength=g)
    variance = g / (g - 1) * np.sum(cluster_scores**2) / (n * p * (1 - p)) ** 2
    centre = math.log(p / (1 - p))
    half = _z(alpha) * math.sqrt(variance)
    return float(stats.logistic.cdf(centre - half)), float(stats.logistic.cdf(centre + half))
