"""A site's aggregates for federated analysis: counts and model estimates, never patient rows.

Why: several hospitals can pool their DLM results without any patient leaving a site. Each site
exports (1) NPV counts per lesion group and subgroup, (2) monthly Kaplan-Meier risk tables per
surgical-strategy arm with times coarsened to whole months, (3) the Cox log hazard ratio and its
standard error; :mod:`etl.analysis.pooling` combines the files.

Small-cell suppression (rule ids cited by the tests):

- S1 (primary): a row (NPV: true_negative / residual / unevaluable; risk table: at_risk, events,
  censored and the number continuing into the next month, at_risk - events - censored) with any
  cell in 1..min_cell-1 is suppressed: every cell of the row becomes None and ``suppressed`` is
  true. No count in 1..min_cell-1 is ever written; 0 is written.
- S2 (NPV, complementary within a group): the categories of a subgroup dimension add up to the
  group's ``all`` row, so when one category row is suppressed every row of that dimension is;
  when the ``all`` row is suppressed every dimension of the group is.
- S3 (NPV, complementary across groups): ``ct_disappeared`` is the sum of the three CT-disappeared
  groups (all three are exported), so a dimension suppressed in any of them is suppressed in
  ``ct_disappeared`` too. S2 and S3 are applied until nothing changes.
- S4 (risk table): once a month is suppressed, every later month of that table is too, so no
  suppressed month's counts can be recovered as the difference of published at-risk numbers.
  With S1 on the continuing count, the number entering the first suppressed month is 0 or at
  least min_cell, and so is the sum of everything after it.
"""
from __future__ import annotations

import datetime as dt
import math

import numpy as np

from .cox import cox_estimable
from .npv import OUTCOMES
from .subgroups import ALL, DIMENSIONS, categories
from .survival import ARMS, ENDPOINTS, REFERENCE_ARM, TREATED_ARM, endpoint_data

FORMAT = "dlmreg-site-aggregates"
FORMAT_VERSION = 1
DEFAULT_MIN_CELL = 5
PARENT_GROUP = "ct_disappeared"
CHILD_GROUPS = ("ct_and_mri_disappeared", "ct_disappeared_mri_visible", "ct_disappeared_mri_missing")
NPV_GROUPS = (PARENT_GROUP,) + CHILD_GROUPS
SUPPRESSION_RULE = (
    "S1: a row with any count in 1..min_cell-1 (risk tables: also at_risk - events - censored) is "
    "written as nulls with suppressed=true. S2: one suppressed category suppresses its whole "
    "subgroup dimension; a suppressed 'all' row suppresses every dimension of the group. S3: a "
    "dimension suppressed in a CT-disappeared group is suppressed in ct_disappeared too. S4: risk "
    "tables end at their first suppressed month (later months suppressed)."
)


def software_version():
    """The installed registry software version, or 'unknown' when not installed as a package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dlm-registry")
    except PackageNotFoundError:
        return "unknown"


def _small(value, min_cell):
    return value is not None and 0 < value < min_cell


def npv_counts(lesions):
    """Unsuppressed NPV counts per group, subgroup dimension and category.

    Preconditions: one row per lesion, as :func:`etl.pipeline.read_cohort_frames` returns.

    Parameters
    ----------
    lesions : pandas.DataFrame
        Columns ``dlm_group``, ``outcome``, ``ce_ious`` and, when available,
        ``mri_protocol_met`` and ``baseline_size_mm`` (missing columns give ``unknown``).

    Returns
    -------
    dict
        ``{group: {dimension: {category: {true_negative, residual, unevaluable}}}}`` for the
        groups of ``NPV_GROUPS`` and the dimensions of ``DIMENSIONS``; a missing outcome counts
        as unevaluable, as in :func:`etl.analysis.npv.npv_estimate`.
    """
    outcome = lesions["outcome"].where(lesions["outcome"].notna(), "unevaluable")
    unknown = sorted(set(outcome) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"unknown lesion outcome(s): {unknown}")
    cuts = categories(lesions)
    group = lesions["dlm_group"]
    masks = {PARENT_GROUP: group.isin(CHILD_GROUPS), **{g: group.eq(g) for g in CHILD_GROUPS}}
    table = {}
    for name, mask in masks.items():
        table[name] = {}
        for dimension, values in DIMENSIONS.items():
            table[name][dimension] = {
                value: {o: int((mask & cuts[dimension].eq(value) & outcome.eq(o)).sum())
                        for o in OUTCOMES}
                for value in values
            }
    return table


def suppress_npv(table, min_cell):
    """Apply rules S1-S3 to an :func:`npv_counts` table (returns a new table).

    Every row gets ``suppressed`` (bool); suppressed rows hold None for each count.
    """
    suppressed = {
        (g, d, c): any(_small(row[o], min_cell) for o in OUTCOMES)
        for g, dims in table.items() for d, cats in dims.items() for c, row in cats.items()
    }
    changed = True
    while changed:
        changed = False

        def mark(group, dimension):
            nonlocal changed
            for category in table[group][dimension]:
                if not suppressed[(group, dimension, category)]:
                    suppressed[(group, dimension, category)] = True
                    changed = True

        for group, dims in table.items():
            for dimension, cats in dims.items():
                if any(suppressed[(group, dimension, c)] for c in cats):
                    mark(group, dimension)                           # S2
                    if group in CHILD_GROUPS:
                        mark(PARENT_GROUP, dimension)                # S3
            if suppressed[(group, ALL, ALL)]:
                for dimension in dims:
                    mark(group, dimension)                           # S2
    return {
        g: {d: {c: ({o: None for o in OUTCOMES} | {"suppressed": True}) if suppressed[(g, d, c)]
                else dict(row, suppressed=False) for c, row in cats.items()}
            for d, cats in dims.items()}
        for g, dims in table.items()
    }


def monthly_risk_table(durations, events):
    """Monthly risk table on times coarsened to whole months (floor).

    Parameters
    ----------
    durations : array-like of float
        Months from time zero (>= 0).
    events : array-like of 0/1

    Returns
    -------
    list of dict
        One row per month t = 0 .. max(floor(duration)): ``month``, ``at_risk`` (floor(time) >= t,
        i.e. under observation at the start of month t), ``events`` and ``censored`` (floor(time)
        == t). Empty for no patients.
    """
    months = np.floor(np.asarray(durations, dtype=float)).astype(int)
    e = np.asarray(events, dtype=int)
    if months.size and months.min() < 0:
        raise ValueError("negative follow-up time")
    if months.size == 0:
        return []
    return [
        {"month": t, "at_risk": int(np.sum(months >= t)),
         "events": int(np.sum((months == t) & (e == 1))),
         "censored": int(np.sum((months == t) & (e == 0)))}
        for t in range(int(months.max()) + 1)
    ]


def suppress_risk_table(rows, min_cell):
    """Apply rules S1 and S4 to a :func:`monthly_risk_table` (returns new rows)."""
    out, stopped = [], False
    for row in rows:
        continuing = row["at_risk"] - row["events"] - row["censored"]
        cells = (row["at_risk"], row["events"], row["censored"], continuing)
        stopped = stopped or any(_small(v, min_cell) for v in cells)
        if stopped:
            out.append({"month": row["month"], "at_risk": None, "events": None, "censored": None,
                        "suppressed": True})
        else:
            out.append(dict(row, suppressed=False))
    return out


def cox_log_hr(data):
    """Cox log HR of all_dlm_removed vs dlm_left_behind (the reference, as in
    :func:`etl.analysis.survival.endpoint_summary`) with its standard error, on exact times.

    Parameters
    ----------
    data : pandas.DataFrame
        As returned by :func:`etl.analysis.survival.endpoint_data`.

    Returns
    -------
    dict
        ``log_hr`` and ``se`` (None when not estimable, see
        :func:`etl.analysis.cox.cox_estimable`, or when the fit does not converge).
    """
    import pandas as pd
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    missing = {"log_hr": None, "se": None}
    x = (data["arm"] == TREATED_ARM).astype(int).to_numpy()
    t, e = data["duration"].to_numpy(), data["event"].to_numpy()
    if not cox_estimable(t, e, x):
        return missing
    try:
        fitter = CoxPHFitter().fit(pd.DataFrame({"duration": t, "event": e, "x": x}),
                                   duration_col="duration", event_col="event")
    except ConvergenceError:
        return missing
    log_hr, se = float(fitter.params_["x"]), float(fitter.standard_errors_["x"])
    if not (math.isfinite(log_hr) and math.isfinite(se)):
        return missing
    return {"log_hr": log_hr, "se": se}


def site_aggregates(lesions, patients, site_id=None, min_cell=DEFAULT_MIN_CELL, today=None):
    """All of a site's exported aggregates, suppression applied.

    Preconditions: the frames of :func:`etl.pipeline.read_cohort_frames` (lesion view and the
    survival population with a strategy).

    Parameters
    ----------
    lesions, patients : pandas.DataFrame
        As for :func:`etl.analysis.analyse`.
    site_id : str, optional
    min_cell : int
        Smallest count written other than 0 (1 disables suppression).
    today : datetime.date, optional
        Export date (default today).

    Returns
    -------
    dict
        JSON-ready: ``format``, ``format_version``, ``site_id``, ``export_date``,
        ``software_version``, ``min_cell``, ``suppression_rule``, ``npv`` (see
        :func:`suppress_npv`) and ``survival`` ({endpoint: {``time_unit``, ``arms``: {arm:
        monthly rows}, ``cox``: {``log_hr``, ``se``, ``treated``, ``reference``}}}).
    """
    if int(min_cell) < 1:
        raise ValueError("min_cell must be at least 1")
    min_cell = int(min_cell)
    survival = {}
    for endpoint in ENDPOINTS:
        data = endpoint_data(patients, endpoint)
        arms = {}
        for arm in ARMS:
            rows = data[data["arm"] == arm]
            arms[arm] = suppress_risk_table(
                monthly_risk_table(rows["duration"].to_numpy(), rows["event"].to_numpy()), min_cell)
        survival[endpoint] = {
            "time_unit": "months, floored (an event or censoring in [t, t+1) is counted in month t)",
            "arms": arms,
            "cox": {**cox_log_hr(data), "treated": TREATED_ARM, "reference": REFERENCE_ARM},
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "site_id": site_id,
        "export_date": (today or dt.date.today()).isoformat(),
        "software_version": software_version(),
        "min_cell": min_cell,
        "suppression_rule": SUPPRESSION_RULE,
        "npv": suppress_npv(npv_counts(lesions), min_cell),
        "survival": survival,
    }
