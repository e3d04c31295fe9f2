"""Cox proportional-hazards ratio for a two-arm comparison.

Why: DREAM reports the hazard ratio of all-DLM-removed vs DLM-left-behind; with small
registries one arm often has no informative events, where the partial likelihood has no
maximum and lifelines would return an arbitrarily large or small HR. That case is
detected up front and reported as None. An HR averages over follow-up, so it comes with a
check of proportional hazards (scaled Schoenfeld residuals) and with its log-scale SE,
which the comparison with DREAM's HR needs.
"""
import numpy as np

from ._convert import finite_or_none

PH_TEST_METHOD = "scaled Schoenfeld residuals vs rank(time)"
PH_ALPHA = 0.05


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


def proportional_hazards_test(fitter, data):
    """Grambsch-Therneau check of proportional hazards for the single covariate ``x``.

    lifelines' :func:`~lifelines.statistics.proportional_hazard_test` with
    ``time_transform="rank"`` (its default): the scaled Schoenfeld residuals at the event
    times are regressed on the rank of the event time; a slope away from 0 means the log HR
    drifts with time. T = (sum_k (g_k - mean g) r*_k)^2 / (d var(beta) sum_k (g_k - mean g)^2)
    is compared with chi-squared on 1 df (d events, g_k the rank, r*_k the residual). This is
    the approximation R's ``cox.zph`` used before survival 3.0, so p differs slightly from
    current R. With DREAM-sized arms the test has little power: "not violated" is not
    evidence of proportional hazards.

    Parameters
    ----------
    fitter : lifelines.CoxPHFitter
        Fitted on ``data``.
    data : pandas.DataFrame
        The frame the fitter was fitted on.

    Returns
    -------
    dict
        ``method``, ``statistic`` (chi-squared, 1 df), ``p_value`` and ``violated``
        (p < 0.05); the numbers None (and ``violated`` None) when the statistic is undefined.
    """
    from lifelines.statistics import proportional_hazard_test

    result = proportional_hazard_test(fitter, data, time_transform="rank")
    statistic = finite_or_none(result.summary.loc["x", "test_statistic"])
    p_value = finite_or_none(result.summary.loc["x", "p"])
    return {
        "method": PH_TEST_METHOD,
        "statistic": statistic,
        "p_value": p_value,
        "violated": None if p_value is None else p_value < PH_ALPHA,
    }


def hazard_ratio(durations, events, indicator):
    """Hazard ratio (indicator 1 vs 0) with its 95% CI and PH check, from lifelines' CoxPHFitter.

    Parameters
    ----------
    durations, events, indicator : array-like
        Time, 0/1 event and 0/1 arm indicator per patient (Efron ties).

    Returns
    -------
    dict
        ``hr`` and ``hr_ci95`` (``[lower, upper]`` = exp(log_hr -/+ 1.96 log_hr_se)),
        ``log_hr`` and its standard error ``log_hr_se`` (what a test against another HR
        needs), and ``ph_test`` (:func:`proportional_hazards_test`). All None when the HR
        is not estimable (see :func:`cox_estimable`) or the fit does not converge.
    """
    import pandas as pd
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    missing = {"hr": None, "hr_ci95": None, "log_hr": None, "log_hr_se": None, "ph_test": None}
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
        "log_hr": finite_or_none(row["coef"]),
        "log_hr_se": finite_or_none(row["se(coef)"]),
        "ph_test": proportional_hazards_test(fitter, data),
    }
