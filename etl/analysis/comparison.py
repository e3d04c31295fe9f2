"""Side-by-side rows of the registry's figures and DREAM's, each with a test where one applies.

Why: the registry exists to check whether DREAM's NPV and survival findings hold in
routine care; a row per shared figure says whether DREAM's value lies in our 95% CI and
ours in DREAM's (or in the range of earlier retrospective series), and gives a p-value
against DREAM's figure where the published numbers allow one
(:mod:`etl.analysis.hypothesis_tests`).
"""
from .hypothesis_tests import binomial_test_vs, log_hr_difference_test
from .npv import PROTOCOL_MET_KEY as PROTOCOL_MET_GROUP
from .survival import ARMS, ENDPOINTS, TREATED_ARM

PRIMARY_GROUP = "ct_and_mri_disappeared"
# DREAM analysed only the CT-and-MRI-disappeared lesions whose post-chemotherapy MRI met its
# protocol (reference lesion_flow: excluded_imaging_protocol_not_met); this group is like for like.


def _inside(value, interval):
    """Whether value lies in [lower, upper]; an upper bound of None means not reached (+inf).

    None when the value or the lower bound is unknown.
    """
    if value is None or interval is None or interval[0] is None:
        return None
    upper = interval[1]
    return bool(interval[0] <= value and (upper is None or value <= upper))


def _row(metric, ours, ours_ci95, dream, dream_ci95, test=None):
    return {
        "metric": metric,
        "ours": ours,
        "ours_ci95": ours_ci95,
        "dream": dream,
        "dream_ci95": dream_ci95,
        "dream_in_our_ci": _inside(dream, ours_ci95),
        "ours_in_dream_ci": _inside(ours, dream_ci95),
        "test": test,
    }


def _computed(test):
    """The test, or None when it could not be computed (no p-value)."""
    return test if test["p_value"] is not None else None


def _npv_row(metric, ours, dream_estimate, dream_ci95):
    """An NPV row with the exact binomial test of our counts against DREAM's estimate."""
    test = None
    true_negative, residual = ours.get("true_negative"), ours.get("residual")
    if dream_estimate is not None and true_negative is not None and residual is not None:
        test = _computed(binomial_test_vs(true_negative, true_negative + residual, dream_estimate))
    return _row(metric, ours["estimate"], ours["ci95"], dream_estimate, dream_ci95, test)


def _hr_row(metric, ours, dream):
    """An HR row with the log-HR difference test (our SE from the Cox fit, DREAM's from its CI)."""
    se_or_ci = ours.get("log_hr_se")
    if se_or_ci is None:
        se_or_ci = ours.get("hr_ci95")
    test = _computed(log_hr_difference_test(ours["hr"], se_or_ci, dream["hr"],
                                            dream.get("hr_ci95")))
    return _row(metric, ours["hr"], ours["hr_ci95"], dream["hr"], dream.get("hr_ci95"), test)


def compare_with_dream(npv, survival, reference):
    """Rows comparing our estimates with DREAM's, for every figure both report.

    Compared: every NPV estimate in the reference's ``npv`` block (``ct_and_mri_disappeared``
    and its CE-IOUS subgroup), the prior retrospective range, and per endpoint the median of
    each arm and the treated arm's HR. Intentionally not compared: ``enrolment`` and
    ``lesion_flow`` (counts describing DREAM's cohort, which depend on the size of the
    centre, not estimates), per-arm ``events`` / ``total`` / ``groups`` (counts; the
    comparable quantities are the median and HR they lead to), ``at_risk`` (counts, on a time
    grid the source does not state), and the ``definition``, ``population``, ``note`` and
    ``guideline`` texts.

    Parameters
    ----------
    npv : dict
        Output of :func:`etl.analysis.npv.npv_summary`. An entry
        ``ct_and_mri_disappeared_mri_protocol_met`` (lesions gone on CT and MRI whose
        post-chemotherapy MRI met DREAM's protocol, the population of DREAM's analysed lesions,
        ``lesion_flow.analysed_ct_and_mri_disappeared``) is optional; when present it gets its own row against DREAM's
        ``ct_and_mri_disappeared`` estimate.
    survival : dict
        Output of :func:`etl.analysis.survival.survival_by_strategy`.
    reference : dict
        Output of :func:`etl.analysis.reference.load_dream_reference`.

    Returns
    -------
    list of dict
        Each row: ``metric`` (dotted results.json path), ``ours``, ``ours_ci95``, ``dream``,
        ``dream_ci95`` (None where DREAM gives none), ``dream_in_our_ci``,
        ``ours_in_dream_ci`` (bool, None when either side is missing) and ``test`` (None when
        no test applies or it cannot be computed):

        - NPV rows (exact interval): :func:`~etl.analysis.hypothesis_tests.binomial_test_vs`
          of true_negative out of true_negative + residual against DREAM's estimate as p0
          (DREAM's own sampling error is ignored, so p is too small if anything).
        - ``npv.ct_and_mri_disappeared.prior_retrospective_range``: ``dream`` None,
          ``dream_ci95`` the range; ``test`` None, a range of other series' estimates has no
          sampling distribution to test against.
        - ``...median`` rows: ``test`` None. A difference of medians needs each median's SE,
          which a Kaplan-Meier CI does not give: it is asymmetric, and open (NE) whenever the
          median or a bound is not reached, as for both of DREAM's OS medians.
        - ``...all_dlm_removed.hr`` rows:
          :func:`~etl.analysis.hypothesis_tests.log_hr_difference_test` of our HR (SE of
          log HR from the Cox fit) against DREAM's (SE implied by its 95% CI).

        Order: NPV rows in the reference's order, the protocol-met row, the prior range,
        then per endpoint the medians of each arm and the HR.
    """
    rows = []
    ref_npv = reference.get("npv", {})
    for key, figure in ref_npv.items():
        if isinstance(figure, dict) and "estimate" in figure and key in npv:
            rows.append(_npv_row(f"npv.{key}", npv[key], figure["estimate"], figure.get("ci95")))
    primary = ref_npv.get(PRIMARY_GROUP)
    if isinstance(primary, dict) and "estimate" in primary and PROTOCOL_MET_GROUP in npv:
        rows.append(_npv_row(f"npv.{PROTOCOL_MET_GROUP}", npv[PROTOCOL_MET_GROUP],
                             primary["estimate"], primary.get("ci95")))
    if "prior_retrospective_range" in ref_npv and PRIMARY_GROUP in npv:
        ours = npv[PRIMARY_GROUP]
        rows.append(
            _row(f"npv.{PRIMARY_GROUP}.prior_retrospective_range", ours["estimate"],
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
            rows.append(_hr_row(f"survival_by_surgical_strategy.{endpoint}.{TREATED_ARM}.hr",
                                ours, dream))
    return rows
