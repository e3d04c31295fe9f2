"""Cox proportional-hazards ratio for a two-arm comparison.

Why: DREAM reports the hazard ratio of all-DLM-removed vs DLM-left-behind; with small
registries one arm often has no informative events, where the partial likelihood has no
maximum and lifelines would return an arbitrarily large or small HR. That case is
detected up front and reported as None.
"""
import numpy as np

from ._convert import finite_or_none


def cox_estimable(durations, events, indicator):
    """Whether the partial likelihood of a binary covariate has a finite maximum.

    It does exactly when some event in arm 1 happens while an arm-0 patient is at risk
    and some event in arm 0 happens while an arm-1 patient is at risk; otherwise the
    likelihood keeps rising as the log HR goes to plus or minus infinity.

    Parameters
    ----------
    durations, events, indicator : array-like
        Time, 0/1 event and 0/1 arm indicator per patient.

    Returns
    -------
    bool
    """
    t = np.asarray(durations, dtype=float)
    e = np.asarray(events, dtype=bool)
    x = np.asarray(indicator, dtype=bool)

    def informative(arm):
        return any(np.any((t >= ti) & (x != arm)) for ti in t[e & (x == arm)])

    return informative(True) and informative(False)


def hazard_ratio(durations, events, indicator):
    """Hazard ratio (indicator 1 vs 0) with its 95% CI from lifelines' CoxPHFitter.

    Parameters
    ----------
    durations, events, indicator : array-like
        Time, 0/1 event and 0/1 arm indicator per patient (Efron ties).

    Returns
    -------
    dict
        ``hr`` and ``hr_ci95`` (``[lower, upper]``), both None when the HR is not
        estimable (see :func:`cox_estimable`) or the fit does not converge.
    """
    import pandas as pd
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    missing = {"hr": None, "hr_ci95": None}
    if not cox_estimable(durations, events, indicator):
        return missing
    data = pd.DataFrame({"duration": durations, "event": events, "x": indicator})
    try:
        fitter = CoxPHFitter().fit(data, duration_col="duration", event_col="event")
    except ConvergenceError:
        return missing
    row = fitter.summary.loc["x"]
    return {
        "hr": finite_or_none(row["exp(coef)"]),
        "hr_ci95": [
            finite_or_none(row["exp(coef) lower 95%"]),
            finite_or_none(row["exp(coef) upper 95%"]),
        ],
    }
