"""Side-by-side rows of the registry's figures and DREAM's.

Why: the registry exists to check whether DREAM's NPV and survival findings hold in
routine care; a row per shared figure says whether DREAM's value lies in our 95% CI and
ours in DREAM's (or in the range of earlier retrospective series).
"""
from .survival import ARMS, ENDPOINTS, TREATED_ARM

PRIOR_RANGE_GROUP = "ct_and_mri_disappeared"


def _inside(value, interval):
    """Whether value lies in [lower, upper]; an upper bound of None means not reached (+inf).

    None when the value or the lower bound is unknown.
    """
    if value is None or interval is None or interval[0] is None:
        return None
    upper = interval[1]
    return bool(interval[0] <= value and (upper is None or value <= upper))


def _row(metric, ours, ours_ci95, dream, dream_ci95):
    return {
        "metric": metric,
        "ours": ours,
        "ours_ci95": ours_ci95,
        "dream": dream,
        "dream_ci95": dream_ci95,
        "dream_in_our_ci": _inside(dream, ours_ci95),
        "ours_in_dream_ci": _inside(ours, dream_ci95),
    }


def compare_with_dream(npv, survival, reference):
    """Rows comparing our estimates with DREAM's, for every figure both report.

    Parameters
    ----------
    npv : dict
        Output of :func:`etl.analysis.npv.npv_summary`.
    survival : dict
        Output of :func:`etl.analysis.survival.survival_by_strategy`.
    reference : dict
        Output of :func:`etl.analysis.reference.load_dream_reference`.

    Returns
    -------
    list of dict
        Each row: ``metric`` (dotted results.json path), ``ours``, ``ours_ci95``, ``dream``,
        ``dream_ci95`` (None where DREAM gives none), ``dream_in_our_ci`` and
        ``ours_in_dream_ci`` (bool, None when either side is missing). NPV rows use the exact
        interval. The last NPV row compares our ``ct_and_mri_disappeared`` NPV with the
        prior retrospective range (its ``dream_ci95``; ``dream`` is None).
    """
    rows = []
    ref_npv = reference.get("npv", {})
    for key, figure in ref_npv.items():
        if isinstance(figure, dict) and "estimate" in figure and key in npv:
            ours = npv[key]
            rows.append(
                _row(f"npv.{key}", ours["estimate"], ours["ci95"], figure["estimate"],
                     figure.get("ci95"))
            )
    if "prior_retrospective_range" in ref_npv and PRIOR_RANGE_GROUP in npv:
        ours = npv[PRIOR_RANGE_GROUP]
        rows.append(
            _row(f"npv.{PRIOR_RANGE_GROUP}.prior_retrospective_range", ours["estimate"],
                 ours["ci95"], None, list(ref_npv["prior_retrospective_range"]))
        )
    ref_survival = reference.get("survival_by_surgical_strategy", {})
    for endpoint in ENDPOINTS:
        ours_arms, ref_arms = survival.get(endpoint, {}), ref_survival.get(endpoint, {})
        for arm in ARMS:
            if arm in ours_arms and arm in ref_arms:
                ours, dream = ours_arms[arm], ref_arms[arm]
                rows.append(
                    _row(f"survival_by_surgical_strategy.{endpoint}.{arm}.median",
                         ours["median"], ours["median_ci95"], dream.get("median"),
                         dream.get("median_ci95"))
                )
        ours, dream = ours_arms.get(TREATED_ARM, {}), ref_arms.get(TREATED_ARM, {})
        if "hr" in ours and "hr" in dream:
            rows.append(
                _row(f"survival_by_surgical_strategy.{endpoint}.{TREATED_ARM}.hr", ours["hr"],
                     ours["hr_ci95"], dream["hr"], dream.get("hr_ci95"))
            )
    return rows
