"""Pooling of several sites' aggregate files (:mod:`etl.analysis.aggregates`) without patient rows.

Why these methods:

- NPV: DerSimonian-Laird random-effects meta-analysis of logit(NPV) per group and subgroup, since
  sites differ in case mix and technique; the fixed-effect (inverse-variance) value and the
  combined-count proportion are reported next to it. A site's logit is log(TN / residual) with
  variance 1/TN + 1/residual; only when one of the two cells is 0 is 0.5 added to both (Haldane-
  Anscombe), otherwise the counts are used as they are. Sites without evaluable lesions carry no
  information and are left out, as are suppressed rows; both are listed.
- Kaplan-Meier: the sites' monthly risk tables are summed month by month and the product-limit
  S(t) = prod_{j<=t} (1 - d_j / n_j) is taken over months; this is exactly lifelines'
  Kaplan-Meier estimate on all sites' patients with times floored to whole months. The 95% CI is
  the exponential Greenwood (log-log) interval, as lifelines computes it. A site's table ends at its
  first suppressed month; the pooled curve stops at the earliest such month (listed), so every
  month of the curve includes every site's patients.
- Cox: inverse-variance fixed-effect and DerSimonian-Laird random-effects pooling of the sites'
  log hazard ratios (all_dlm_removed vs dlm_left_behind); sites where the HR is not estimable are
  listed as excluded.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from .aggregates import ALL, FORMAT, FORMAT_VERSION
from .npv import OUTCOMES
from .survival import ARMS, ENDPOINTS, REFERENCE_ARM, TREATED_ARM

Z95 = float(stats.norm.ppf(0.975))
KM_REPORT_MONTHS = (12, 24, 36, 60)


def _expit(x):
    return float(1 / (1 + math.exp(-x)))


def dersimonian_laird(estimates, variances):
    """Fixed-effect and DerSimonian-Laird random-effects pooling of k estimates.

    With w_i = 1/v_i, the fixed-effect mean is sum(w y)/sum(w) with variance 1/sum(w);
    Q = sum w (y - mean_fixed)^2 on k-1 degrees of freedom; tau^2 = max(0, (Q - (k-1)) / C) with
    C = sum(w) - sum(w^2)/sum(w); the random-effects weights are 1/(v_i + tau^2);
    I^2 = max(0, (Q - (k-1)) / Q) (0 when Q = 0).

    Parameters
    ----------
    estimates, variances : sequence of float
        One (estimate, within-study variance > 0) per study.

    Returns
    -------
    dict
        ``k``, ``fixed`` and ``random`` ({``estimate``, ``se``, ``ci95``}), ``q``, ``df``,
        ``tau2``, ``i2`` (``q``, ``tau2`` and ``i2`` None when k < 2). None when k = 0.
    """
    y = np.asarray(estimates, dtype=float)
    v = np.asarray(variances, dtype=float)
    k = y.size
    if k == 0:
        return None
    if np.any(v <= 0) or not np.all(np.isfinite(v)) or not np.all(np.isfinite(y)):
        raise ValueError("variances must be finite and positive, estimates finite")
    w = 1 / v
    fixed = float(np.sum(w * y) / np.sum(w))
    fixed_se = float(math.sqrt(1 / np.sum(w)))
    if k >= 2:
        q = float(np.sum(w * (y - fixed) ** 2))
        c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
        tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
        i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    else:
        q, tau2, i2 = None, None, None
    w_star = 1 / (v + (tau2 or 0.0))
    random = float(np.sum(w_star * y) / np.sum(w_star))
    random_se = float(math.sqrt(1 / np.sum(w_star)))

    def summary(mean, se):
        return {"estimate": mean, "se": se, "ci95": [mean - Z95 * se, mean + Z95 * se]}

    return {"k": int(k), "fixed": summary(fixed, fixed_se), "random": summary(random, random_se),
            "q": q, "df": int(k - 1), "tau2": tau2, "i2": i2}


def logit_npv(true_negative, residual):
    """Site logit(NPV) and its variance; 0.5 is added to both cells only when one of them is 0.

    Returns
    -------
    tuple
        ``(logit, variance, corrected)``; None when there is no evaluable lesion.
    """
    tn, res = float(true_negative), float(residual)
    if tn + res == 0:
        return None
    corrected = tn == 0 or res == 0
    if corrected:
        tn, res = tn + 0.5, res + 0.5
    return math.log(tn / res), 1 / tn + 1 / res, corrected


def pool_npv_row(rows):
    """Pool one NPV row (group, dimension, category) across sites.

    Parameters
    ----------
    rows : list of (site label, row dict or None)
        The row of each site's file (None when the site's file lacks it).

    Returns
    -------
    dict
        ``sites_included``, ``sites_excluded`` ([{site, reason}]), ``continuity_corrected``
        (sites), summed counts of the included sites, ``combined_estimate`` (summed TN / summed
        evaluable), ``fixed`` and ``random`` (``logit``, ``se``, ``estimate``, ``ci95`` on the
        NPV scale), ``q``, ``df``, ``tau2``, ``i2``.
    """
    included, excluded, corrected, logits, variances = [], [], [], [], []
    totals = {o: 0 for o in OUTCOMES}
    for site, row in rows:
        if row is None:
            excluded.append({"site": site, "reason": "row missing"})
            continue
        if row.get("suppressed"):
            excluded.append({"site": site, "reason": "suppressed"})
            continue
        for o in OUTCOMES:
            totals[o] += int(row[o])
        result = logit_npv(row["true_negative"], row["residual"])
        if result is None:
            excluded.append({"site": site, "reason": "no evaluable lesion"})
            continue
        included.append(site)
        logits.append(result[0])
        variances.append(result[1])
        if result[2]:
            corrected.append(site)
    evaluable = totals["true_negative"] + totals["residual"]
    pooled = dersimonian_laird(logits, variances)

    def on_npv_scale(part):
        if pooled is None:
            return None
        p = pooled[part]
        return {"logit": p["estimate"], "se": p["se"], "estimate": _expit(p["estimate"]),
                "ci95": [_expit(p["ci95"][0]), _expit(p["ci95"][1])]}

    return {
        "sites_included": included,
        "sites_excluded": excluded,
        "continuity_corrected": corrected,
        **totals,
        "combined_estimate": totals["true_negative"] / evaluable if evaluable else None,
        "fixed": on_npv_scale("fixed"),
        "random": on_npv_scale("random"),
        **{key: None if pooled is None else pooled[key] for key in ("q", "df", "tau2", "i2")},
    }


def product_limit(rows, alpha=0.05):
    """Kaplan-Meier over months from a risk table, with the exponential Greenwood CI.

    S(t) = prod_{j<=t} (1 - d_j / n_j); Greenwood's sum V(t) = sum_{j<=t} d_j / (n_j (n_j - d_j));
    the interval is exp(-exp(log(-log S) ± z sqrt(V) / |log S|)) (lifelines' default).

    Parameters
    ----------
    rows : list of dict
        ``month``, ``at_risk``, ``events`` (and optionally ``censored``), months in order.

    Returns
    -------
    list of dict
        The rows with ``survival`` (after month t's events: lifelines' S(t) on floored times)
        and ``ci95`` ([1, 1] before any event; None once S = 0 or n_j = d_j).
    """
    z = float(stats.norm.ppf(1 - alpha / 2))
    s, greenwood, out = 1.0, 0.0, []
    for row in rows:
        n, d = row["at_risk"], row["events"]
        if n > 0:
            s *= 1 - d / n
            greenwood = greenwood + d / (n * (n - d)) if n > d else math.inf
        if s <= 0 or not math.isfinite(greenwood):
            ci = None
        elif s >= 1:
            ci = [1.0, 1.0]
        else:
            half = z * math.sqrt(greenwood) / abs(math.log(s))
            centre = math.log(-math.log(s))
            ci = [math.exp(-math.exp(centre + half)), math.exp(-math.exp(centre - half))]
        out.append(dict(row, survival=s, ci95=ci))
    return out


def pool_risk_tables(tables):
    """Sum sites' monthly risk tables and take the product-limit over months.

    Parameters
    ----------
    tables : list of (site label, list of monthly rows)
        Each site's rows for one endpoint and arm (``suppressed`` rows allowed at the end).

    Returns
    -------
    dict
        ``months`` (pooled rows, :func:`product_limit`), ``truncated_at_month`` (the first month
        missing because some site's table is suppressed from there on, else None),
        ``truncated_by`` (those sites), ``median_month`` (first month with S <= 0.5, None if not
        reached within the curve) and ``sites``.
    """
    horizons, ends = {}, {}
    for site, rows in tables:
        first = next((r["month"] for r in rows if r.get("suppressed")), None)
        if first is not None:
            horizons[site] = first
        ends[site] = len(rows)
    stop = min(horizons.values()) if horizons else None
    last = max(ends.values(), default=0)
    length = last if stop is None else min(stop, last)
    pooled = []
    for t in range(length):
        row = {"month": t, "at_risk": 0, "events": 0, "censored": 0}
        for _, rows in tables:
            if t < len(rows):                    # beyond its table a site has nobody at risk
                for key in ("at_risk", "events", "censored"):
                    row[key] += int(rows[t][key])
        pooled.append(row)
    curve = product_limit(pooled)
    median = next((r["month"] for r in curve if r["survival"] <= 0.5), None)
    return {
        "sites": [site for site, _ in tables],
        "months": curve,
        "truncated_at_month": stop,
        "truncated_by": sorted(site for site, month in horizons.items() if month == stop),
        "median_month": median,
    }


def pool_log_hr(estimates):
    """Fixed-effect and DL random-effects pooled log HR (all_dlm_removed vs dlm_left_behind).

    Parameters
    ----------
    estimates : list of (site label, {log_hr, se})

    Returns
    -------
    dict
        ``sites_included``, ``sites_excluded``, ``fixed`` / ``random`` with ``log_hr``, ``se``,
        ``hr``, ``hr_ci95``, and ``q``, ``df``, ``tau2``, ``i2``.
    """
    included, excluded, y, v = [], [], [], []
    for site, cox in estimates:
        if cox is None or cox.get("log_hr") is None or not cox.get("se"):
            excluded.append({"site": site, "reason": "hazard ratio not estimable"})
            continue
        included.append(site)
        y.append(cox["log_hr"])
        v.append(cox["se"] ** 2)
    pooled = dersimonian_laird(y, v)

    def on_hr_scale(part):
        if pooled is None:
            return None
        p = pooled[part]
        return {"log_hr": p["estimate"], "se": p["se"], "hr": math.exp(p["estimate"]),
                "hr_ci95": [math.exp(p["ci95"][0]), math.exp(p["ci95"][1])]}

    return {"treated": TREATED_ARM, "reference": REFERENCE_ARM,
            "sites_included": included, "sites_excluded": excluded,
            "fixed": on_hr_scale("fixed"), "random": on_hr_scale("random"),
            **{key: None if pooled is None else pooled[key] for key in ("q", "df", "tau2", "i2")}}


def check_site_file(data):
    """Raise ValueError unless ``data`` is a site-aggregates file of a supported version."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a dlmreg site-aggregates file")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported site-aggregates format_version {data.get('format_version')!r}")


def site_labels(sites):
    """Unique labels: each file's site_id (or its position), suffixed when repeated."""
    labels, seen = [], {}
    for index, data in enumerate(sites):
        base = str(data.get("site_id") or f"site_{index + 1}")
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return labels


def pool_sites(sites):
    """Pool several sites' aggregate files.

    Preconditions: each item is a loaded :func:`etl.analysis.aggregates.site_aggregates` file.

    Parameters
    ----------
    sites : list of dict

    Returns
    -------
    dict
        JSON-ready: ``sites`` (label, export date, software version, min_cell), ``methods``,
        ``npv`` ({group: {dimension: {category: :func:`pool_npv_row`}}}) and ``survival``
        ({endpoint: {``arms``: {arm: :func:`pool_risk_tables`}, ``cox``: :func:`pool_log_hr`}}).
    """
    if not sites:
        raise ValueError("no site files to pool")
    for data in sites:
        check_site_file(data)
    labels = site_labels(sites)
    npv = {}
    for data in sites:
        for group, dims in data["npv"].items():
            for dimension, cats in dims.items():
                for category in cats:
                    npv.setdefault(group, {}).setdefault(dimension, {}).setdefault(category, None)
    for group, dims in npv.items():
        for dimension, cats in dims.items():
            for category in cats:
                cats[category] = pool_npv_row([
                    (label, data["npv"].get(group, {}).get(dimension, {}).get(category))
                    for label, data in zip(labels, sites)])
    survival = {}
    for endpoint in ENDPOINTS:
        parts = [(label, data["survival"][endpoint]) for label, data in zip(labels, sites)]
        survival[endpoint] = {
            "time_unit": "months, floored",
            "arms": {arm: pool_risk_tables([(label, part["arms"][arm]) for label, part in parts])
                     for arm in ARMS},
            "cox": pool_log_hr([(label, part.get("cox")) for label, part in parts]),
        }
    return {
        "sites": [{"site": label, "export_date": data.get("export_date"),
                   "software_version": data.get("software_version"), "min_cell": data.get("min_cell")}
                  for label, data in zip(labels, sites)],
        "methods": {
            "npv": "DerSimonian-Laird random effects on logit(NPV), variance 1/TN + 1/residual; 0.5 added "
                   "to both cells only when one is 0; fixed effect and combined counts alongside",
            "kaplan_meier": "product-limit over summed monthly risk tables (times floored to months), "
                            "exponential Greenwood 95% CI; curve stops at the first month any site suppressed",
            "cox": "inverse-variance fixed effect and DerSimonian-Laird random effects on log HR",
        },
        "npv": npv,
        "survival": survival,
    }


def _fmt(value, pattern="{:.3f}"):
    return "n/a" if value is None else pattern.format(value)


def pooled_markdown(pooled):
    """A short Markdown summary of :func:`pool_sites`: NPV per group, KM at set months, HR."""
    lines = ["# Pooled DLM results", "", "Sites: " + ", ".join(s["site"] for s in pooled["sites"]), "",
             "## NPV (random effects, logit scale)", "",
             "| group | sites | TN | residual | NPV | 95% CI | I² | tau² | excluded |",
             "|---|---|---|---|---|---|---|---|---|"]
    for group, dims in pooled["npv"].items():
        row = dims[ALL][ALL]
        random = row["random"] or {}
        ci = random.get("ci95")
        lines.append(f"| {group} | {len(row['sites_included'])} | {row['true_negative']} | {row['residual']} | "
                     f"{_fmt(random.get('estimate'))} | "
                     f"{'n/a' if ci is None else f'{ci[0]:.3f}–{ci[1]:.3f}'} | {_fmt(row['i2'], '{:.0%}')} | "
                     f"{_fmt(row['tau2'])} | "
                     f"{', '.join(e['site'] + ' (' + e['reason'] + ')' for e in row['sites_excluded']) or '-'} |")
    for endpoint, part in pooled["survival"].items():
        lines += ["", f"## {endpoint}", "",
                  "| arm | " + " | ".join(f"S({m} mo)" for m in KM_REPORT_MONTHS) + " | curve stops at |",
                  "|---|" + "---|" * len(KM_REPORT_MONTHS) + "---|"]
        for arm, km in part["arms"].items():
            by_month = {r["month"]: r["survival"] for r in km["months"]}
            cells = " | ".join(_fmt(by_month.get(m)) for m in KM_REPORT_MONTHS)
            stop = km["truncated_at_month"]
            lines.append(f"| {arm} | {cells} | {'-' if stop is None else f'month {stop}'} |")
        cox = part["cox"]
        for kind in ("fixed", "random"):
            est = cox[kind]
            text = "n/a" if est is None else f"{est['hr']:.2f} ({est['hr_ci95'][0]:.2f}–{est['hr_ci95'][1]:.2f})"
            lines.append(f"\nHR {cox['treated']} vs {cox['reference']} ({kind}): {text}")
    return "\n".join(lines) + "\n"
