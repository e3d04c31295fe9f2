"""Negative predictive value of a disappeared liver metastasis (DLM), per lesion group.

Why: DREAM's primary endpoint is the share of lesions that disappeared on imaging and held
no cancer - true_negative / (true_negative + residual). Unevaluable lesions are counted
but left out of the denominator. Lesions of one patient are correlated, hence the
cluster interval next to the exact one.
"""
import pandas as pd

from etl.lesions.classify import follow_up_outcome

from .intervals import clopper_pearson, cluster_logit, wilson
from .subgroups import ALL, DIMENSIONS, categories

CT_DISAPPEARED_GROUPS = (
    "ct_and_mri_disappeared",
    "ct_disappeared_mri_visible",
    "ct_disappeared_mri_missing",
)
CE_IOUS_KEY = "ct_and_mri_disappeared_with_contrast_enhanced_intraoperative_ultrasound"
PROTOCOL_MET_KEY = "ct_and_mri_disappeared_mri_protocol_met"
SUBGROUP_GROUPS = ("ct_disappeared", "ct_and_mri_disappeared", "ct_disappeared_mri_visible")
SENSITIVITY_WINDOWS = (12.0, 24.0)
FOLLOW_UP_COLUMNS = ("outcome_basis", "t0_date", "followup_regrowth_date", "last_followup_date")
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
        ``ct_and_mri_disappeared``, ``ct_disappeared_mri_visible``, the CE-IOUS subgroup
        of ``ct_and_mri_disappeared`` (only ``ce_ious`` exactly true counts) and DREAM's analysed
        population: ``ct_and_mri_disappeared`` whose post-chemotherapy MRI met the protocol
        (DREAM left out the lesions whose MRI did not; 203 - 51 = 152).
    """
    group = lesions["dlm_group"]
    both = group.eq("ct_and_mri_disappeared")
    protocol = lesions["mri_protocol_met"] if "mri_protocol_met" in lesions else pd.Series(
        None, index=lesions.index, dtype=object)
    return {
        "ct_disappeared": group.isin(CT_DISAPPEARED_GROUPS),
        "ct_and_mri_disappeared": both,
        "ct_disappeared_mri_visible": group.eq("ct_disappeared_mri_visible"),
        CE_IOUS_KEY: both & lesions["ce_ious"].eq(True),
        PROTOCOL_MET_KEY: both & protocol.map(lambda v: v is True or v == 1),
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


def npv_subgroups(lesions):
    """NPV per subgroup of each main group (the forest plot's rows).

    Parameters
    ----------
    lesions : pandas.DataFrame
        As for :func:`npv_summary`, plus the subgroup columns of
        :func:`etl.analysis.subgroups.categories` where available.

    Returns
    -------
    dict
        ``{group: {dimension: {category: npv_estimate}}}`` for the groups ``SUBGROUP_GROUPS``
        and every dimension of ``etl.analysis.subgroups.DIMENSIONS`` except ``all``; every
        category is present, empty ones with zero counts.
    """
    masks = npv_groups(lesions)
    cuts = categories(lesions)
    return {
        group: {
            dimension: {value: npv_estimate(lesions[masks[group] & cuts[dimension].eq(value)])
                        for value in values}
            for dimension, values in DIMENSIONS.items() if dimension != ALL
        }
        for group in SUBGROUP_GROUPS
    }


def _as_date(value):
    return None if pd.isna(value) else pd.Timestamp(value).date()


def outcomes_at_window(lesions, window_months):
    """Each lesion's outcome had the follow-up window been ``window_months`` (rule O2 re-applied).

    Only lesions judged by follow-up imaging change: resected lesions keep their pathology outcome,
    and lesions without a hepatectomy stay unevaluable.

    Parameters
    ----------
    lesions : pandas.DataFrame
        Columns ``outcome``, ``outcome_basis``, ``t0_date``, ``followup_regrowth_date`` and
        ``last_followup_date`` (dates or ISO strings).
    window_months : float

    Returns
    -------
    pandas.Series
        Outcome per lesion, aligned with ``lesions``.
    """
    def outcome(row):
        return follow_up_outcome(_as_date(row["t0_date"]), _as_date(row["followup_regrowth_date"]),
                                 _as_date(row["last_followup_date"]), window_months)[0]

    outcomes = lesions["outcome"].astype(object)
    judged = (lesions["outcome_basis"] == "follow_up") & lesions["t0_date"].notna()
    if judged.any():
        outcomes[judged] = lesions[judged].apply(outcome, axis=1)
    return outcomes


def npv_sensitivity(lesions, windows=SENSITIVITY_WINDOWS):
    """The NPV per group under other assumptions than the registry's run.

    Parameters
    ----------
    lesions : pandas.DataFrame
        As for :func:`npv_summary` and :func:`outcomes_at_window`.
    windows : sequence of float
        Follow-up windows (months) to re-apply.

    Returns
    -------
    dict
        ``followup_window_<w>_months`` per window, ``unevaluable_as_true_negative`` (best case)
        and ``unevaluable_as_residual`` (worst case): each a :func:`npv_summary` on the changed
        outcomes. The two bounding cases bracket what the unevaluable lesions could do to the NPV.
        A window's entry is None when ``lesions`` lacks the follow-up columns.
    """
    result = {}
    for window in windows:
        label = f"followup_window_{window:g}_months"
        result[label] = (npv_summary(lesions.assign(outcome=outcomes_at_window(lesions, window)))
                         if set(FOLLOW_UP_COLUMNS) <= set(lesions) else None)
    outcome = lesions["outcome"].where(lesions["outcome"].notna(), "unevaluable")
    for counted_as in EVALUABLE:
        changed = outcome.where(outcome.ne("unevaluable"), counted_as)
        result[f"unevaluable_as_{counted_as}"] = npv_summary(lesions.assign(outcome=changed))
    return result
