"""Relapse-free and overall survival by surgical strategy, as in DREAM.

Why: DREAM compares patients whose disappeared lesions were all removed with those who had
some left behind (the reference arm). Each endpoint gets per-arm Kaplan-Meier summaries, a
Cox hazard ratio with its proportional-hazards check and a log-rank p, assembled here into
the results.json shape.
"""
import numpy as np

from ._convert import finite_or_none
from .cox import hazard_ratio
from .kaplan_meier import fit_km, km_summary

TREATED_ARM = "all_dlm_removed"
REFERENCE_ARM = "dlm_left_behind"
ARMS = (TREATED_ARM, REFERENCE_ARM)
ENDPOINTS = {
    "relapse_free_survival": ("rfs_months", "rfs_event"),
    "overall_survival": ("os_months", "os_event"),
}
DEFAULT_AT_RISK_TIMES = tuple(float(t) for t in range(0, 61, 6))


def endpoint_data(patients, endpoint):
    """Patients of the two arms with known time and event status for one endpoint.

    Parameters
    ----------
    patients : pandas.DataFrame
        Columns ``strategy`` and the endpoint's time / event columns (see ``ENDPOINTS``).
    endpoint : str
        ``relapse_free_survival`` or ``overall_survival``.

    Returns
    -------
    pandas.DataFrame
        Columns ``arm``, ``duration`` (float months), ``event`` (int 0/1). Rows with another
        or no strategy, or with a missing time or event, are dropped.
    """
    time_col, event_col = ENDPOINTS[endpoint]
    rows = patients[patients["strategy"].isin(ARMS)].dropna(subset=[time_col, event_col])
    return rows.assign(
        arm=rows["strategy"],
        duration=rows[time_col].astype(float),
        event=rows[event_col].astype(int),
    )[["arm", "duration", "event"]]


def logrank_p(data):
    """Log-rank p for treated vs reference arm.

    Parameters
    ----------
    data : pandas.DataFrame
        As returned by :func:`endpoint_data`.

    Returns
    -------
    float or None
        None when no event happens while both arms are at risk (the statistic is 0/0;
        lifelines would report p = 1).
    """
    from lifelines.statistics import logrank_test

    treated = data[data["arm"] == TREATED_ARM]
    reference = data[data["arm"] == REFERENCE_ARM]
    # Both arms are at risk at t while t is at most each arm's longest duration (NaN: an empty arm).
    both_at_risk_until = min(treated["duration"].max(), reference["duration"].max())
    if not (data.loc[data["event"] == 1, "duration"] <= both_at_risk_until).any():
        return None
    result = logrank_test(
        treated["duration"], reference["duration"], treated["event"], reference["event"]
    )
    return finite_or_none(result.p_value)


def endpoint_summary(data, at_risk_times):
    """Per-arm summaries for one endpoint, with HR and log-rank p on the treated arm.

    Parameters
    ----------
    data : pandas.DataFrame
        As returned by :func:`endpoint_data`.
    at_risk_times : sequence of float

    Returns
    -------
    dict of arm -> dict
        :func:`etl.analysis.kaplan_meier.km_summary` per arm; the treated arm also holds
        ``hr``, ``hr_ci95``, ``log_hr``, ``log_hr_se``, ``ph_test``
        (:func:`etl.analysis.cox.hazard_ratio`) and ``logrank_p``.
    """
    summary = {}
    for arm in ARMS:
        rows = data[data["arm"] == arm]
        summary[arm] = km_summary(
            rows["duration"].to_numpy(), rows["event"].to_numpy(), at_risk_times
        )
    indicator = (data["arm"] == TREATED_ARM).astype(int).to_numpy()
    summary[TREATED_ARM].update(
        hazard_ratio(data["duration"].to_numpy(), data["event"].to_numpy(), indicator)
    )
    summary[TREATED_ARM]["logrank_p"] = logrank_p(data)
    return summary


def survival_by_strategy(patients, at_risk_times=None):
    """Relapse-free and overall survival of all-DLM-removed vs DLM-left-behind.

    Preconditions: ``patients`` is the survival population (patients with at least one
    lesion gone on CT and MRI), one row per patient; times are months from the
    hepatectomy (the completing stage of a two-stage resection).

    Parameters
    ----------
    patients : pandas.DataFrame
        Columns ``person_id``, ``strategy``, ``rfs_months``, ``rfs_event``, ``os_months``,
        ``os_event``. Strategies other than the two arms are ignored.
    at_risk_times : sequence of float, optional
        Times for the at-risk counts; default every 6 months from 0 to 60.

    Returns
    -------
    dict
        ``reference_group``, ``time_unit``, ``groups`` ({arm: patients}), ``at_risk_times``
        and, per endpoint (``relapse_free_survival``, ``overall_survival``), the
        :func:`endpoint_summary`. Fields that cannot be estimated (empty arm, no events)
        are None.
    """
    times = [float(t) for t in (DEFAULT_AT_RISK_TIMES if at_risk_times is None else at_risk_times)]
    strategy = patients["strategy"]
    result = {
        "reference_group": REFERENCE_ARM,
        "time_unit": "months",
        "groups": {arm: int(np.sum(strategy == arm)) for arm in ARMS},
        "at_risk_times": times,
    }
    for endpoint in ENDPOINTS:
        result[endpoint] = endpoint_summary(endpoint_data(patients, endpoint), times)
    return result


def km_fits(patients):
    """Kaplan-Meier fits per endpoint and arm, for plotting.

    Parameters
    ----------
    patients : pandas.DataFrame
        As for :func:`survival_by_strategy`.

    Returns
    -------
    dict
        ``{endpoint: {arm: lifelines.KaplanMeierFitter}}``; arms without patients are left
        out. A fitter's ``durations`` give the same at-risk counts as the results.
    """
    fits = {}
    for endpoint in ENDPOINTS:
        data = endpoint_data(patients, endpoint)
        fits[endpoint] = {}
        for arm in ARMS:
            rows = data[data["arm"] == arm]
            fitter = fit_km(rows["duration"].to_numpy(), rows["event"].to_numpy(), label=arm)
            if fitter is not None:
                fits[endpoint][arm] = fitter
    return fits
