"""Survival by surgical strategy (etl.analysis.survival, kaplan_meier, cox)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test, proportional_hazard_test
from lifelines.utils import median_survival_times
from scipy import stats

from etl.analysis.cox import cox_estimable, hazard_ratio
from etl.analysis.kaplan_meier import at_risk_counts, km_summary
from etl.analysis.survival import survival_by_strategy

REMOVED, LEFT = "all_dlm_removed", "dlm_left_behind"


def _patients(removed, left, extra=()):
    """Rows (rfs_months, rfs_event, os_months, os_event) per arm; ``extra`` rows get no arm."""
    rows = [(REMOVED, *r) for r in removed] + [(LEFT, *r) for r in left]
    rows += [(strategy, *r) for strategy, r in extra]
    frame = pd.DataFrame(rows, columns=["strategy", "rfs_months", "rfs_event", "os_months",
                                        "os_event"])
    return frame.assign(person_id=range(len(frame)))


# removed arm: RFS times 2, 3+, 4, 5, 7+, 9 (+ = censored)
REMOVED_ROWS = [(2, 1, 30, 0), (3, 0, 40, 1), (4, 1, 50, 0), (5, 1, 24, 1), (7, 0, 60, 0),
                (9, 1, 70, 0)]
LEFT_ROWS = [(1, 1, 20, 1), (2.5, 1, 35, 0), (6, 1, 12, 1), (8, 0, 44, 0), (10, 1, 61, 1)]


def test_km_median_hand_computed():
    """Product-limit estimate for times 2, 3+, 4, 5, 7+, 9:

    t=2: 6 at risk, 1 event -> S = 5/6         = 0.8333
    t=3: censored
    t=4: 4 at risk, 1 event -> S = 5/6 * 3/4   = 0.6250
    t=5: 3 at risk, 1 event -> S = 0.625 * 2/3 = 0.4167  (first S <= 0.5: median = 5)
    t=9: 1 at risk, 1 event -> S = 0
    """
    summary = km_summary(np.array([2, 3, 4, 5, 7, 9]), np.array([1, 0, 1, 1, 0, 1]), [0, 4, 8])
    assert summary["median"] == 5.0
    assert (summary["events"], summary["total"]) == (4, 6)
    assert summary["at_risk"] == [6, 4, 1]


def test_km_median_and_ci_match_lifelines():
    durations, events = [1, 2.5, 6, 8, 10, 3, 4.5], [1, 1, 1, 0, 1, 1, 0]
    summary = km_summary(np.array(durations), np.array(events), [0])
    fitter = KaplanMeierFitter().fit(durations, events)
    ci = median_survival_times(fitter.confidence_interval_).iloc[0].tolist()
    assert summary["median"] == fitter.median_survival_time_
    assert summary["median_ci95"] == ci


def test_km_median_not_reached_is_none():
    summary = km_summary(np.array([2.0, 3.0, 4.0, 5.0]), np.array([1, 0, 0, 0]), [0])
    assert summary["median"] is None
    assert summary["median_ci95"][1] is None


def test_at_risk_counts_hand_checked():
    # at risk at t = patients with time >= t (an event at exactly t is still at risk at t)
    assert at_risk_counts([2, 3, 4, 5, 7, 9], [0, 3, 3.5, 9, 9.01]) == [6, 5, 4, 1, 0]


def test_survival_by_strategy_shape_and_arms():
    patients = _patients(REMOVED_ROWS, LEFT_ROWS, extra=[(None, (1, 1, 1, 1)),
                                                         ("other", (2, 1, 2, 1))])
    result = survival_by_strategy(patients, at_risk_times=[0, 5])
    assert result["reference_group"] == LEFT and result["time_unit"] == "months"
    assert result["groups"] == {REMOVED: 6, LEFT: 5}
    rfs = result["relapse_free_survival"]
    assert rfs[REMOVED]["median"] == 5.0  # the hand-computed case above
    assert rfs[REMOVED]["at_risk"] == [6, 3]
    assert rfs[LEFT]["at_risk"] == [5, 3]
    assert (rfs[LEFT]["events"], rfs[LEFT]["total"]) == (4, 5)
    assert "hr" in rfs[REMOVED] and "hr" not in rfs[LEFT]
    assert "ph_test" in rfs[REMOVED] and "ph_test" not in rfs[LEFT]
    assert type(rfs[REMOVED]["hr"]) is float and type(rfs[REMOVED]["logrank_p"]) is float
    assert type(rfs[REMOVED]["log_hr"]) is float and type(rfs[REMOVED]["log_hr_se"]) is float
    ph = rfs[REMOVED]["ph_test"]
    assert set(ph) == {"method", "statistic", "p_value", "violated"}
    assert type(ph["statistic"]) is float and type(ph["violated"]) is bool
    json.dumps(result, allow_nan=False)


def test_default_at_risk_grid_is_every_six_months_to_sixty():
    result = survival_by_strategy(_patients(REMOVED_ROWS, LEFT_ROWS))
    assert result["at_risk_times"] == [0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60]
    # removed-arm OS times 24, 30, 40, 50, 60, 70: a time equal to the grid point counts
    assert result["overall_survival"][REMOVED]["at_risk"] == [6, 6, 6, 6, 6, 5, 4, 3, 3, 2, 2]


def test_hr_and_logrank_match_lifelines_on_same_data():
    patients = _patients(REMOVED_ROWS, LEFT_ROWS)
    rfs = survival_by_strategy(patients)["relapse_free_survival"][REMOVED]
    data = pd.DataFrame({
        "T": patients["rfs_months"], "E": patients["rfs_event"],
        "removed": (patients["strategy"] == REMOVED).astype(int),
    })
    cph = CoxPHFitter().fit(data, "T", "E")
    assert rfs["hr"] == pytest.approx(math.exp(cph.params_["removed"]), rel=1e-9)
    expected_ci = np.exp(cph.confidence_intervals_.loc["removed"]).tolist()
    assert rfs["hr_ci95"] == pytest.approx(expected_ci, rel=1e-9)
    arm, ref = data[data["removed"] == 1], data[data["removed"] == 0]
    expected_p = logrank_test(arm["T"], ref["T"], arm["E"], ref["E"]).p_value
    assert rfs["logrank_p"] == pytest.approx(expected_p, rel=1e-12)


def test_identical_arms_give_hr_one():
    patients = _patients(REMOVED_ROWS, REMOVED_ROWS)
    rfs = survival_by_strategy(patients)["relapse_free_survival"][REMOVED]
    assert rfs["hr"] == pytest.approx(1.0, abs=1e-6)
    lower, upper = rfs["hr_ci95"]
    assert lower < 1 < upper
    assert math.log(upper) == pytest.approx(-math.log(lower), rel=1e-6)
    assert rfs["logrank_p"] == pytest.approx(1.0, abs=1e-9)


def test_logrank_hand_computed():
    """Arm A: events at 1 and 3; arm B: events at 2 and 4.

    t  n  n_A  d_A  E_A=n_A*d/n  V=n_A*n_B*d*(n-d)/(n^2 (n-1))
    1  4  2    1    0.5          2*2*1*3/(16*3) = 0.25
    2  3  1    0    1/3          1*2*1*2/(9*2)  = 2/9
    3  2  1    1    0.5          1*1*1*1/(4*1)  = 0.25
    4  1  0    0    0            0
    O_A - E_A = 2 - 4/3 = 2/3; V = 0.25 + 2/9 + 0.25 = 13/18
    chi2 = (2/3)**2 / (13/18) = 8/13 = 0.6154; p = P(chi2_1 > 0.6154) = 0.4328
    """
    patients = _patients([(1, 1, 1, 1), (3, 1, 3, 1)], [(2, 1, 2, 1), (4, 1, 4, 1)])
    rfs = survival_by_strategy(patients)["relapse_free_survival"][REMOVED]
    assert rfs["logrank_p"] == pytest.approx(stats.chi2.sf(8 / 13, 1), rel=1e-9)
    assert rfs["logrank_p"] == pytest.approx(0.4328, abs=1e-4)


def test_empty_arm_gives_none_not_exception():
    result = survival_by_strategy(_patients(REMOVED_ROWS, []))
    assert result["groups"] == {REMOVED: 6, LEFT: 0}
    for endpoint in ("relapse_free_survival", "overall_survival"):
        left, removed = result[endpoint][LEFT], result[endpoint][REMOVED]
        assert (left["events"], left["total"]) == (0, 0)
        assert left["median"] is None and left["median_ci95"] is None
        assert left["at_risk"] == [0] * 11
        assert removed["hr"] is None and removed["hr_ci95"] is None
        assert removed["log_hr"] is None and removed["log_hr_se"] is None
        assert removed["ph_test"] is None
        assert removed["logrank_p"] is None
    json.dumps(result, allow_nan=False)


def test_no_events_gives_none_hr_and_p():
    no_events = [(t, 0, t, 0) for t in (3, 5, 8)]
    result = survival_by_strategy(_patients(no_events, no_events))
    rfs = result["relapse_free_survival"]
    assert rfs[REMOVED]["hr"] is None and rfs[REMOVED]["logrank_p"] is None
    assert rfs[REMOVED]["median"] is None and rfs[LEFT]["median"] is None


def test_logrank_p_needs_an_event_while_both_arms_are_at_risk():
    # every event after the other arm's last follow-up: no information, None (lifelines says p = 1)
    late = survival_by_strategy(_patients([(2, 0, 2, 0), (3, 0, 3, 0)], [(4, 1, 4, 1), (5, 1, 5, 1)]))
    assert late["relapse_free_survival"][REMOVED]["logrank_p"] is None
    # an event at the other arm's last time: both still at risk then (durations >= t), so a p
    tied = survival_by_strategy(_patients([(2, 0, 2, 0), (4, 0, 4, 0)], [(4, 1, 4, 1), (5, 1, 5, 1)]))
    expected = logrank_test([2, 4], [4, 5], [0, 0], [1, 1]).p_value
    assert tied["relapse_free_survival"][REMOVED]["logrank_p"] == pytest.approx(expected, rel=1e-12)


def test_events_in_one_arm_only_make_hr_not_estimable():
    # all events in the removed arm: the partial likelihood has no finite maximum
    assert not cox_estimable([1, 2, 3, 4], [1, 1, 0, 0], [1, 1, 0, 0])
    assert hazard_ratio([1, 2, 3, 4], [1, 1, 0, 0], [1, 1, 0, 0]) == {
        "hr": None, "hr_ci95": None, "log_hr": None, "log_hr_se": None, "ph_test": None}
    # events in both arms, each with the other arm at risk: estimable
    assert cox_estimable([1, 2, 3, 4], [1, 1, 0, 0], [1, 0, 1, 0])
    # the arm-0 event at 5 happens after every arm-1 patient has left: still not estimable
    assert not cox_estimable([1, 2, 5], [1, 0, 1], [1, 0, 0])


def test_missing_times_are_dropped_per_endpoint():
    patients = _patients(REMOVED_ROWS, LEFT_ROWS)
    patients.loc[0, "os_months"] = np.nan
    result = survival_by_strategy(patients)
    assert result["overall_survival"][REMOVED]["total"] == 5
    assert result["relapse_free_survival"][REMOVED]["total"] == 6


def _rfs_frame(patients):
    return pd.DataFrame({
        "T": patients["rfs_months"], "E": patients["rfs_event"],
        "removed": (patients["strategy"] == REMOVED).astype(int),
    })


def test_log_hr_and_se_match_lifelines_and_give_the_ci():
    patients = _patients(REMOVED_ROWS, LEFT_ROWS)
    rfs = survival_by_strategy(patients)["relapse_free_survival"][REMOVED]
    cph = CoxPHFitter().fit(_rfs_frame(patients), "T", "E")
    assert rfs["log_hr"] == pytest.approx(cph.params_["removed"], rel=1e-12)
    assert rfs["log_hr_se"] == pytest.approx(cph.standard_errors_["removed"], rel=1e-12)
    z = stats.norm.ppf(0.975)
    expected = [math.exp(rfs["log_hr"] - z * rfs["log_hr_se"]),
                math.exp(rfs["log_hr"] + z * rfs["log_hr_se"])]
    assert rfs["hr_ci95"] == pytest.approx(expected, rel=1e-9)


def test_ph_test_matches_lifelines_on_same_data():
    """Reference: lifelines 0.30.3 on the same RFS data, fitted here independently::

        cph = CoxPHFitter().fit(data, "T", "E")
        proportional_hazard_test(cph, data, time_transform="rank")

    and the statistic re-derived from lifelines' scaled Schoenfeld residuals r*_k (no tied
    event times here, so the rank g_k of the k-th event time is 1..d):
    T = (sum (g_k - mean g) r*_k)^2 / (d var(beta) sum (g_k - mean g)^2), p = chi2_1.sf(T).
    """
    patients = _patients(REMOVED_ROWS, LEFT_ROWS)
    ph = survival_by_strategy(patients)["relapse_free_survival"][REMOVED]["ph_test"]
    data = _rfs_frame(patients)
    cph = CoxPHFitter().fit(data, "T", "E")
    reference = proportional_hazard_test(cph, data, time_transform="rank").summary.loc["removed"]
    assert ph["statistic"] == pytest.approx(reference["test_statistic"], rel=1e-12)
    assert ph["p_value"] == pytest.approx(reference["p"], rel=1e-12)
    assert ph["method"] == "scaled Schoenfeld residuals vs rank(time)"
    assert ph["violated"] is bool(reference["p"] < 0.05)

    resid = cph.compute_residuals(data, kind="scaled_schoenfeld")["removed"]
    times = data.loc[resid.index, "T"]
    g = times.rank().to_numpy()
    g = g - g.mean()
    d = int(data["E"].sum())
    statistic = (g @ resid.to_numpy()) ** 2 / (d * cph.variance_matrix_.loc["removed", "removed"]
                                               * (g @ g))
    assert ph["statistic"] == pytest.approx(statistic, rel=1e-9)
    assert ph["p_value"] == pytest.approx(stats.chi2.sf(statistic, 1), rel=1e-9)


def _simulated(time_removed, time_left, seed):
    """Both arms' times with uniform(0, 36) censoring, as a patients frame (RFS = OS)."""
    rng = np.random.default_rng(seed)
    times = np.concatenate([time_removed(rng), time_left(rng)])
    censor = rng.uniform(0, 36, len(times))
    observed, event = np.minimum(times, censor), (times <= censor).astype(int)
    n_removed = len(times) // 2
    rows = list(zip(observed, event, observed, event))
    return _patients(rows[:n_removed], rows[n_removed:])


def test_ph_test_rejects_crossing_hazards():
    """Removed arm Weibull(shape 0.5, scale 12): hazard falls; left arm Weibull(shape 2,
    scale 12): hazard rises; same scale, so the hazards cross. 100 per arm, seed 0.
    Observed with lifelines 0.30.3: statistic 61.86, p = 3.7e-15.
    """
    patients = _simulated(lambda rng: 12 * rng.weibull(0.5, 100),
                          lambda rng: 12 * rng.weibull(2.0, 100), seed=0)
    ph = survival_by_strategy(patients)["relapse_free_survival"][REMOVED]["ph_test"]
    assert ph["p_value"] < 1e-6 and ph["violated"] is True


def test_ph_test_does_not_reject_under_proportional_hazards():
    """Exponential times, hazard 0.05/month (removed) vs 0.1/month (left): constant HR 0.5.
    300 per arm, seed 0. Observed with lifelines 0.30.3: HR 0.397, statistic 0.016, p = 0.90.
    """
    patients = _simulated(lambda rng: rng.exponential(1 / 0.05, 300),
                          lambda rng: rng.exponential(1 / 0.1, 300), seed=0)
    rfs = survival_by_strategy(patients)["relapse_free_survival"][REMOVED]
    assert rfs["hr_ci95"][1] < 1  # a real, constant effect
    assert rfs["ph_test"]["p_value"] > 0.5 and rfs["ph_test"]["violated"] is False
    json.dumps(rfs, allow_nan=False)
