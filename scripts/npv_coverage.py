#!/usr/bin/env python3
"""Coverage of the NPV confidence intervals in simulated cohorts with a known true NPV.

Why: the registry reports the lesion-level NPV with the exact (Clopper-Pearson), Wilson and
patient-clustered (``cluster_logit``) intervals of ``etl.analysis.intervals``. Several lesions
come from one patient, so the exact interval's independence assumption may not hold; this
script measures how often each 95% interval contains the true NPV. It is not part of the fast
tests (``tests/test_npv_coverage_script.py`` only checks its machinery on a few cohorts).

Data-generating process (one cohort)
------------------------------------
- ``patients`` patients; patient i has ``m_i = 1 + Poisson(lam)`` disappeared, evaluable lesions,
  with ``1 + lam`` = DREAM's lesions per patient (152 / 45, read from the bundled reference).
- A patient random effect ``Z_i ~ N(0, 1)``, independent of ``m_i``; each of the patient's lesions
  is a true negative independently with probability ``p_i = expit(mu + sigma * Z_i)``.
- Because ``m_i`` is independent of ``Z_i``, the true lesion-level NPV (expected true negatives
  over expected lesions) is ``E[expit(mu + sigma Z)]``, computed by Gauss-Hermite quadrature;
  ``mu`` is solved so that it equals DREAM's NPV (0.625, read from the reference, not retyped).
- ``sigma = 0`` gives independent lesions; larger ``sigma`` gives stronger within-patient
  correlation (latent-scale ICC ``sigma² / (sigma² + pi²/3)``).

For each (sigma, patients) cell, ``--cohorts`` cohorts are drawn; each interval counts as
covering when ``lower <= true NPV <= upper``. An undefined cluster interval (pooled proportion
0 or 1) counts as NOT covering, and the number of such cohorts is reported separately. The
intervals are the project's own functions, called once per cohort. With ``--boot B > 0`` a
cluster (patient) bootstrap percentile interval with B resamples is added for comparison.

    python scripts/npv_coverage.py                              # 500 cohorts per cell, table
    python scripts/npv_coverage.py --out docs/npv_coverage.md   # also write the markdown file
    python scripts/npv_coverage.py --cohorts 2000 --jobs 2

Results do not depend on ``--jobs``: each cell has its own seed, spawned from ``--seed``.
"""
from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import optimize, special

from etl.analysis.intervals import clopper_pearson, cluster_logit, wilson
from etl.analysis.reference import load_dream_reference

DEFAULT_SEED = 20251527  # fixed; any value works, this one names EORTC 1527
DEFAULT_COHORTS = 500
DEFAULT_SIGMAS = (0.0, 0.5, 1.0)
DEFAULT_BOOT = 999
ALPHA = 0.05
TARGET_BAND = (0.93, 0.97)
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite.hermgauss(100)
METHODS = ("clopper_pearson", "wilson", "cluster", "bootstrap")
METHOD_LABELS = {"clopper_pearson": "Clopper-Pearson", "wilson": "Wilson", "cluster": "Cluster (GEE)",
                 "bootstrap": "Cluster bootstrap"}


def dream_design():
    """DREAM's NPV, patients and lesions per patient for the CT-and-MRI-disappeared group.

    Returns
    -------
    dict
        ``npv`` (0.625), ``patients`` (45), ``lesions`` (152), ``lesions_per_patient``.
    """
    ref = load_dream_reference()
    flow = ref["lesion_flow"]["analysed_ct_and_mri_disappeared"]
    return {"npv": ref["npv"]["ct_and_mri_disappeared"]["estimate"], "patients": flow["patients"],
            "lesions": flow["lesions"], "lesions_per_patient": flow["lesions"] / flow["patients"]}


def true_npv(mu, sigma):
    """Lesion-level NPV ``E[expit(mu + sigma Z)]``, Z ~ N(0, 1), by 100-node Gauss-Hermite quadrature.

    Preconditions: lesion counts independent of Z (so the lesion-weighted mean equals this).
    """
    if sigma == 0:
        return float(special.expit(mu))
    values = special.expit(mu + sigma * math.sqrt(2.0) * _GH_NODES)
    return float(np.dot(_GH_WEIGHTS, values) / math.sqrt(math.pi))


def mu_for_npv(npv, sigma):
    """The logit-scale intercept ``mu`` for which ``true_npv(mu, sigma) == npv`` (0 < npv < 1)."""
    if not 0 < npv < 1:
        raise ValueError(f"npv must lie in (0, 1), got {npv}")
    return float(optimize.brentq(lambda mu: true_npv(mu, sigma) - npv, -30.0, 30.0, xtol=1e-13))


def draw_cohorts(rng, cohorts, patients, mu, sigma, lesions_per_patient):
    """Lesions and true negatives per patient for ``cohorts`` cohorts (arrays of shape cohorts x patients)."""
    lesions = 1 + rng.poisson(lesions_per_patient - 1.0, size=(cohorts, patients))
    p = special.expit(mu + sigma * rng.standard_normal((cohorts, patients)))
    negatives = rng.binomial(lesions, p)
    return lesions, negatives


def _bootstrap_percentile(rng, lesions, negatives, resamples, alpha=ALPHA):
    """Patient bootstrap percentile interval of sum(negatives) / sum(lesions)."""
    index = rng.integers(0, lesions.size, size=(resamples, lesions.size))
    ratios = negatives[index].sum(axis=1) / lesions[index].sum(axis=1)
    lower, upper = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(lower), float(upper)


def simulate_cell(sigma, patients, cohorts, seed, npv=None, lesions_per_patient=None, boot=DEFAULT_BOOT):
    """Coverage of each interval in ``cohorts`` simulated cohorts of one scenario.

    Parameters
    ----------
    sigma : float
        SD of the patient random effect on the logit scale (0 = independent lesions).
    patients : int
        Patients per cohort.
    cohorts : int
        Number of simulated cohorts R.
    seed : int or numpy.random.SeedSequence
        Seed of this cell's generator.
    npv, lesions_per_patient : float, optional
        True lesion-level NPV and mean lesions per patient; default DREAM's.
    boot : int
        Bootstrap resamples per cohort; 0 leaves the bootstrap interval out.

    Returns
    -------
    dict
        Scenario (``sigma``, ``patients``, ``cohorts``, ``mu``, ``truth``), ``mean_lesions``,
        ``mean_estimate``, and per method in ``methods``: ``coverage`` (undefined counted as not
        covering), ``mc_se`` = sqrt(c(1-c)/R), ``mean_width`` (over defined intervals), ``undefined``
        (count), ``lower_misses`` / ``upper_misses`` (truth below the lower / above the upper bound).
    """
    design = dream_design()
    npv = design["npv"] if npv is None else npv
    lesions_per_patient = design["lesions_per_patient"] if lesions_per_patient is None else lesions_per_patient
    mu = mu_for_npv(npv, sigma)
    truth = true_npv(mu, sigma)
    rng = np.random.default_rng(seed)
    lesions, negatives = draw_cohorts(rng, cohorts, patients, mu, sigma, lesions_per_patient)
    methods = [m for m in METHODS if boot > 0 or m != "bootstrap"]
    bounds = {m: np.full((cohorts, 2), np.nan) for m in methods}
    patient_ids = np.arange(patients)
    for r in range(cohorts):
        m_r, x_r = lesions[r], negatives[r]
        x, n = int(x_r.sum()), int(m_r.sum())
        clusters = np.repeat(patient_ids, m_r)
        # lesion k of patient i is a true negative when k < x_i (order within a patient is irrelevant)
        rank = np.arange(n) - np.repeat(np.cumsum(m_r) - m_r, m_r)
        outcomes = (rank < np.repeat(x_r, m_r)).astype(int)
        found = {"clopper_pearson": clopper_pearson(x, n, ALPHA), "wilson": wilson(x, n, ALPHA),
                 "cluster": cluster_logit(outcomes, clusters, ALPHA)}
        if boot > 0:
            found["bootstrap"] = _bootstrap_percentile(rng, m_r, x_r, boot)
        for method, interval in found.items():
            if interval is not None:
                bounds[method][r] = interval
    result = {"sigma": float(sigma), "patients": int(patients), "cohorts": int(cohorts), "mu": mu,
              "truth": truth, "mean_lesions": float(lesions.sum(axis=1).mean()),
              "mean_estimate": float((negatives.sum(axis=1) / lesions.sum(axis=1)).mean()), "methods": {}}
    for method in methods:
        low, high = bounds[method][:, 0], bounds[method][:, 1]
        defined = ~np.isnan(low)
        covered = defined & (low <= truth) & (truth <= high)
        coverage = float(covered.mean())
        result["methods"][method] = {
            "coverage": coverage, "mc_se": math.sqrt(coverage * (1 - coverage) / cohorts),
            "mean_width": float((high - low)[defined].mean()) if defined.any() else float("nan"),
            "undefined": int((~defined).sum()),
            "lower_misses": int((defined & (low > truth)).sum()),
            "upper_misses": int((defined & (high < truth)).sum())}
    return result


def _cell(args):
    return simulate_cell(*args)


def run(cohorts=DEFAULT_COHORTS, seed=DEFAULT_SEED, sigmas=DEFAULT_SIGMAS, patients=None, boot=DEFAULT_BOOT,
        jobs=1):
    """All (sigma, patients) cells, each with its own SeedSequence child of ``seed`` (order: sigma, patients).

    ``patients`` defaults to (DREAM's 45, 200). Returns a list of ``simulate_cell`` results.
    """
    design = dream_design()
    patients = (design["patients"], 200) if patients is None else tuple(patients)
    cells = [(s, n) for s in sigmas for n in patients]
    seeds = np.random.SeedSequence(seed).spawn(len(cells))
    tasks = [(s, n, cohorts, sq, design["npv"], design["lesions_per_patient"], boot)
             for (s, n), sq in zip(cells, seeds)]
    if jobs and jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(_cell, tasks))
    return [_cell(t) for t in tasks]


def _pct(value):
    return f"{100 * value:.1f}"


def markdown_table(results):
    """Markdown table: per cell, coverage % (Monte Carlo SE) and mean width of each interval."""
    methods = [m for m in METHODS if all(m in r["methods"] for r in results)]
    head = ["sigma", "patients", "lesions per cohort (mean)", "mean NPV estimate"]
    for m in methods:
        head += [f"{METHOD_LABELS[m]} coverage % (SE)", f"{METHOD_LABELS[m]} width"]
    head.append("cluster undefined")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    low, high = TARGET_BAND
    for r in results:
        row = [f"{r['sigma']:g}", str(r["patients"]), f"{r['mean_lesions']:.1f}", f"{r['mean_estimate']:.3f}"]
        for m in methods:
            stats = r["methods"][m]
            flag = "" if low <= stats["coverage"] <= high else " *"
            row += [f"{_pct(stats['coverage'])} ({_pct(stats['mc_se'])}){flag}", f"{stats['mean_width']:.3f}"]
        row.append(f"{r['methods']['cluster']['undefined']}/{r['cohorts']}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def misses_table(results):
    """Where the misses fall: truth below the lower bound / above the upper bound, per interval."""
    methods = [m for m in METHODS if all(m in r["methods"] for r in results)]
    head = ["sigma", "patients"] + [f"{METHOD_LABELS[m]} low / high misses" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for r in results:
        row = [f"{r['sigma']:g}", str(r["patients"])]
        row += [f"{r['methods'][m]['lower_misses']} / {r['methods'][m]['upper_misses']}" for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def report(results, command, seed, boot):
    """The markdown document written by ``--out`` (no date: it is reproducible from the command)."""
    design = dream_design()
    cohorts = results[0]["cohorts"]
    mc_se = math.sqrt(0.95 * 0.05 / cohorts)
    sigmas = sorted({r["sigma"] for r in results})
    mus = "\n".join(f"- sigma {s:g}: mu = {next(r['mu'] for r in results if r['sigma'] == s):.4f}, "
                     f"latent-scale ICC = {s**2 / (s**2 + math.pi**2 / 3):.2f}" for s in sigmas)
    low, high = TARGET_BAND
    boot_text = ("\n\nThe cluster bootstrap column is for comparison only (not a registry output): patients "
                 f"resampled with\nreplacement, {boot} resamples per cohort, 2.5% and 97.5% percentiles of the "
                 "pooled NPV." if boot > 0 else "")
    return f"""# Coverage of the NPV confidence intervals (simulation)

Generated by `scripts/npv_coverage.py` (see its docstring for the model). Reproduce with:

```bash
{command}
```

Seed {seed}; {cohorts} simulated cohorts per row; `--jobs` does not change the numbers.

**Model.** True lesion-level NPV = {design['npv']} (DREAM, CT-and-MRI-disappeared lesions, read from
`etl/analysis/reference/dream_reference.json`). Each patient has 1 + Poisson({design['lesions_per_patient'] - 1:.3f})
lesions (mean {design['lesions_per_patient']:.2f}, DREAM's {design['lesions']} lesions / {design['patients']} patients) and a
logit-scale random effect N(0, sigma²) independent of the lesion count; given it, the patient's lesions
are independent true negatives with probability expit(mu + sigma Z). The true NPV is therefore
E[expit(mu + sigma Z)], computed by Gauss-Hermite quadrature, with mu solved to give {design['npv']}:

{mus}

Every lesion is evaluable. sigma 0 is the independence the exact and Wilson intervals assume.

**Reading the table.** Coverage = share of cohorts whose 95% interval contains the true NPV, with
its Monte Carlo SE sqrt(c(1-c)/R) in brackets (at 95% and R = {cohorts} the SE is {100 * mc_se:.1f} points,
so the {100 * low:.0f}-{100 * high:.0f}% band is about ±2 SE). `*` marks coverage outside {100 * low:.0f}-{100 * high:.0f}%.
Width = mean upper - lower. The cluster interval (`cluster_logit`) is undefined when the pooled
proportion is 0 or 1; such cohorts are counted as **not covering** and their number is shown in the
last column.{boot_text}

{markdown_table(results)}

Misses by side (truth below the lower bound / truth above the upper bound), out of {cohorts}:

{misses_table(results)}
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohorts", type=int, default=DEFAULT_COHORTS, help="simulated cohorts per cell")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS),
                        help="logit-scale SDs of the patient random effect")
    parser.add_argument("--patients", type=int, nargs="+", default=None,
                        help="patients per cohort (default: DREAM's 45, and 200)")
    parser.add_argument("--boot", type=int, default=DEFAULT_BOOT,
                        help="cluster bootstrap resamples per cohort (0: no bootstrap interval)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (results do not depend on it)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args(argv)
    if args.cohorts < 1:
        parser.error("--cohorts must be at least 1")
    results = run(args.cohorts, args.seed, args.sigmas, args.patients, args.boot, args.jobs)
    command = (f"python scripts/npv_coverage.py --cohorts {args.cohorts} --seed {args.seed} "
               f"--sigmas {' '.join(f'{s:g}' for s in args.sigmas)} "
               f"--patients {' '.join(str(r['patients']) for r in results if r['sigma'] == args.sigmas[0])} "
               f"--boot {args.boot}" + (f" --out {args.out.as_posix()}" if args.out else ""))
    text = report(results, command, args.seed, args.boot)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
