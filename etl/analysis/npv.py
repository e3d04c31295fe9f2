"""Negative predictive value of a disappeared liver metastasis (DLM), per lesion group.

Why: DREAM's primary endpoint is the share of lesions that disappeared on imaging and held
no cancer - true_negative / (true_negative + residual). Unevaluable lesions are counted
but left out of the denominator. Lesions of one patient are correlated, hence the
cluster interval next to the exact one.
"""
from .intervals import clopper_pearson, cluster_logit, wilson

CT_DISAPPEARED_GROUPS = (
    "ct_and_mri_disappeared",
    "ct_disappeared_mri_visible",
    "ct_disappeared_mri_missing",
)
CE_IOUS_KEY = "ct_and_mri_disappeared_with_contrast_enhanced_intraoperative_ultrasound"
EVALUABLE = ("true_negative", "residual")
OUTCOMES = EVALUABLE + ("unevaluable",)


def npv_groups(lesions):
    """Boolean masks selecting the lesions of each reported group.

    Parameters
    ----------
    lesions : pandas.DataFrame
        Columns ``dlm_group`` and ``ce_ious``.

    Returns
    -------
    dict of str -> pandas.Series of bool
        Keys ``ct_disappeared`` (union of the CT-disappeared groups, MRI any),
        ``ct_and_mri_disappeared``, ``ct_disappeared_mri_visible`` and the CE-IOUS subgroup
        of ``ct_and_mri_disappeared`` (only ``ce_ious`` exactly true counts).
    """
    group = lesions["dlm_group"]
    both = group.eq("ct_and_mri_disappeared")
    return {
        "ct_disappeared": group.isin(CT_DISAPPEARED_GROUPS),
        "ct_and_mri_disappeared": both,
        "ct_disappeared_mri_visible": group.eq("ct_disappeared_mri_visible"),
        CE_IOUS_KEY: both & lesions["ce_ious"].eq(True),
    }


def npv_estimate(lesions):
    """NPV with its counts and three 95% intervals for one group of lesions.

    Parameters
    ----------
    lesions : pandas.DataFrame
        The group's lesions: columns ``person_id`` and ``outcome``. A missing outcome counts
        as unevaluable; any other value outside true_negative / residual / unevaluable
        raises ValueError rather than being silently dropped.

    Returns
    -------
    dict
        ``lesions`` (all, unevaluable included), ``patients`` (distinct person_id),
        ``true_negative``, ``residual``, ``unevaluable``, ``estimate`` (None when no lesion
        is evaluable), ``ci95`` (Clopper-Pearson), ``ci95_wilson`` and ``ci95_cluster``
        (patients as clusters); each interval is ``[lower, upper]`` or None when undefined
        (see :mod:`etl.analysis.intervals`).
    """
    outcome = lesions["outcome"].where(lesions["outcome"].notna(), "unevaluable")
    unknown = sorted(set(outcome) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"unknown lesion outcome(s): {unknown}")
    evaluable = lesions[outcome.isin(EVALUABLE)]
    y = evaluable["outcome"].eq("true_negative").astype(int)
    true_negative, n = int(y.sum()), len(y)
    intervals = {
        "ci95": clopper_pearson(true_negative, n),
        "ci95_wilson": wilson(true_negative, n),
        "ci95_cluster": cluster_logit(y.to_numpy(), evaluable["person_id"].to_numpy()),
    }
    return {
        "lesions": len(lesions),
        "patients": int(lesions["person_id"].nunique()),
        "true_negative": true_negative,
        "residual": n - true_negative,
        "unevaluable": int(outcome.eq("unevaluable").sum()),
        "estimate": true_negative / n if n else None,
        **{key: None if ci is None else list(ci) for key, ci in intervals.items()},
    }


def npv_summary(lesions):
    """NPV per DLM group.

    Preconditions: one row per lesion, as built from the registry's lesion view.

    Parameters
    ----------
    lesions : pandas.DataFrame
        Columns ``person_id``, ``lesion_id``, ``dlm_group``, ``outcome``, ``ce_ious``.

    Returns
    -------
    dict of str -> dict
        One :func:`npv_estimate` result per key of :func:`npv_groups`; groups without
        lesions are present with zero counts and None estimates.
    """
    return {key: npv_estimate(lesions[mask]) for key, mask in npv_groups(lesions).items()}
