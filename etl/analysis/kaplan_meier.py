"""Kaplan-Meier summary of one arm: events, median survival with its CI, numbers at risk.

Why: medians and at-risk tables are what DREAM reports per surgical strategy, so they are
computed the same way for the registry (lifelines' product-limit estimate, exponential
Greenwood CI; the median is the first time the curve is at or below 0.5).
"""
import numpy as np

from ._convert import finite_or_none


def fit_km(durations, events, label=None):
    """Fit a Kaplan-Meier curve.

    Parameters
    ----------
    durations : array-like of float
        Follow-up time per patient.
    events : array-like of 0/1
        1 = event observed, 0 = censored.
    label : str, optional
        Curve label (used in plots and CI column names).

    Returns
    -------
    lifelines.KaplanMeierFitter or None
        None when there are no patients.
    """
    from lifelines import KaplanMeierFitter

    if len(durations) == 0:
        return None
    return KaplanMeierFitter().fit(durations, event_observed=events, label=label)


def at_risk_counts(durations, times):
    """Number of patients still under observation at each time.

    Parameters
    ----------
    durations : array-like of float
    times : iterable of float

    Returns
    -------
    list of int
        For each t, the count of durations >= t (an event or censoring at t still counts
        as at risk at t, as in lifelines' event table).
    """
    durations = np.asarray(durations, dtype=float)
    return [int(np.sum(durations >= t)) for t in times]


def km_summary(durations, events, at_risk_times):
    """Events, median with 95% CI and at-risk counts for one arm.

    Parameters
    ----------
    durations : array-like of float
    events : array-like of 0/1
    at_risk_times : iterable of float

    Returns
    -------
    dict
        ``events``, ``total``, ``median`` (None if not reached), ``median_ci95``
        (``[lower, upper]``, a bound None when not reached; the whole field None when the
        arm has no patients) and ``at_risk``.
    """
    from lifelines.utils import median_survival_times

    fitter = fit_km(durations, events)
    if fitter is None:
        median, ci = None, None
    else:
        median = finite_or_none(fitter.median_survival_time_)
        bounds = median_survival_times(fitter.confidence_interval_).iloc[0]
        ci = [finite_or_none(bounds.iloc[0]), finite_or_none(bounds.iloc[1])]
    return {
        "events": int(np.sum(events)),
        "total": len(durations),
        "median": median,
        "median_ci95": ci,
        "at_risk": at_risk_counts(durations, at_risk_times),
    }
