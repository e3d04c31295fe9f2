"""Human-readable report: one self-contained HTML page plus two Kaplan-Meier PNGs.

Why: clinicians read the registry's results next to DREAM's, not results.json. The page
needs no network (inline CSS, images by relative name) and escapes every text that comes
from data, since site names and codes arrive from outside.
"""
from html import escape
from pathlib import Path

from .km_plot import plot_km
from .reference import load_dream_reference
from .survival import ARMS, TREATED_ARM, km_fits

ARM_LABELS = {"all_dlm_removed": "All DLM removed", "dlm_left_behind": "DLM left behind"}
ENDPOINT_LABELS = {
    "relapse_free_survival": ("Relapse-free survival", "km_rfs.png"),
    "overall_survival": ("Overall survival", "km_os.png"),
}
GROUP_LABELS = {
    "ct_disappeared": "Disappeared on CT (MRI any)",
    "ct_and_mri_disappeared": "Disappeared on CT and MRI",
    "ct_disappeared_mri_visible": "Disappeared on CT, visible on MRI",
    "ct_and_mri_disappeared_with_contrast_enhanced_intraoperative_ultrasound":
        "Disappeared on CT and MRI, contrast-enhanced intraoperative ultrasound",
}
RUN_ORDER = ("resources_read", "loaded", "quarantined", "excluded")
DASH = "\u2013"

CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 75em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
.note { color: #555; font-size: 0.9em; }
"""


def _pct(value):
    return DASH if value is None else f"{100 * value:.1f}%"


def _months(value):
    return "NE" if value is None else f"{value:.1f}"


def _hr(value):
    return DASH if value is None else f"{value:.2f}"


def _p(value):
    return DASH if value is None else f"{value:.3g}"


def _ci(interval, fmt):
    """Format ``[lower, upper]``; a None bound is not estimable (NE), a None interval a dash."""
    if interval is None:
        return DASH
    lower, upper = ("NE" if bound is None else fmt(bound) for bound in interval)
    return f"{lower}{DASH}{upper}"


def _with_ci(value, interval, fmt):
    if value is None and interval is None:
        return DASH
    return f"{fmt(value)} ({_ci(interval, fmt)})"


def _yes_no(flag):
    return DASH if flag is None else ("yes" if flag else "no")


def _cell(value):
    """Escape any data value for a table cell (lists and dicts flattened to text)."""
    if isinstance(value, dict):
        return "; ".join(f"{escape(str(k))}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return f"{len(value)}: {', '.join(_cell(v) for v in value)}" if value else "0"
    return escape(str(value))


def _table(header, rows):
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _key_values(mapping, order=()):
    keys = [k for k in order if k in mapping] + [k for k in mapping if k not in order]
    return _table(["Item", "Value"], [[escape(str(k)), _cell(mapping[k])] for k in keys])


def _npv_section(npv, dream_npv):
    rows = []
    for key, est in npv.items():
        dream = dream_npv.get(key, {})
        rows.append([
            escape(GROUP_LABELS.get(key, key)),
            str(est["lesions"]), str(est["patients"]), str(est["true_negative"]),
            str(est["residual"]), str(est["unevaluable"]), _pct(est["estimate"]),
            _ci(est["ci95"], _pct), _ci(est["ci95_wilson"], _pct), _ci(est["ci95_cluster"], _pct),
            _pct(dream.get("estimate")), _ci(dream.get("ci95"), _pct),
            escape(str(dream.get("lesions", DASH))),
        ])
    header = ["Group", "Lesions", "Patients", "True negative", "Residual", "Unevaluable",
              "NPV", "95% CI exact", "95% CI Wilson", "95% CI by patient", "DREAM NPV",
              "DREAM 95% CI", "DREAM lesions"]
    return _table(header, rows)


def _hr_cell(arm_figures, treated):
    if not treated:
        return "reference"
    return _with_ci(arm_figures.get("hr"), arm_figures.get("hr_ci95"), _hr)


def _survival_rows(endpoint, ours, dream):
    rows = []
    for arm in ARMS:
        arm_ours, arm_dream = ours.get(arm, {}), dream.get(arm, {})
        treated = arm == TREATED_ARM
        median = DASH  # an arm without patients has no curve at all
        if arm_ours.get("total"):
            median = _with_ci(arm_ours.get("median"), arm_ours.get("median_ci95"), _months)
        rows.append([
            escape(ENDPOINT_LABELS[endpoint][0]), escape(ARM_LABELS[arm]),
            f"{arm_ours.get('events', 0)}/{arm_ours.get('total', 0)}",
            median,
            _hr_cell(arm_ours, treated),
            _p(arm_ours.get("logrank_p")) if treated else "",
            escape(f"{arm_dream.get('events', DASH)}/{arm_dream.get('total', DASH)}"),
            _with_ci(arm_dream.get("median"), arm_dream.get("median_ci95"), _months),
            _hr_cell(arm_dream, treated),
        ])
    return rows


def _survival_section(survival, dream):
    rows = []
    for endpoint in ENDPOINT_LABELS:
        rows += _survival_rows(endpoint, survival.get(endpoint, {}), dream.get(endpoint, {}))
    header = ["Endpoint", "Arm", "Events/total", "Median, months (95% CI)", "HR (95% CI)",
              "Log-rank p", "DREAM events/total", "DREAM median (95% CI)", "DREAM HR (95% CI)"]
    return _table(header, rows)


def _comparison_section(rows):
    out = []
    for row in rows:
        metric = row["metric"]
        fmt = _pct if metric.startswith("npv.") else _hr if metric.endswith(".hr") else _months
        out.append([
            escape(metric), _with_ci(row["ours"], row["ours_ci95"], fmt),
            fmt(row["dream"]),
            _ci(row["dream_ci95"], fmt),
            _yes_no(row["dream_in_our_ci"]), _yes_no(row["ours_in_dream_ci"]),
        ])
    header = ["Metric", "Ours (95% CI)", "DREAM", "DREAM 95% CI or range", "DREAM in our CI",
              "Ours in DREAM CI/range"]
    return _table(header, out)


METHODS = """
<p>A lesion is one liver metastasis followed from the imaging before chemotherapy. It
<em>disappeared</em> on a modality (CT, MRI) when it was visible before chemotherapy and not
visible on the study after it. Each disappeared lesion is <em>residual</em> when pathology of the
resected site found cancer cells or follow-up imaging showed recurrence at that site,
<em>true negative</em> when pathology found no cancer cells or no recurrence appeared at that site
during follow-up (two years in DREAM; the registry's window is configurable), and otherwise
<em>unevaluable</em>. The ultrasound subgroup holds the lesions gone on CT and MRI of patients whose
operation used contrast-enhanced intraoperative ultrasound. The negative predictive value (NPV) is the
number of true negatives divided by true negatives plus residuals; unevaluable lesions are left out.
Its exact 95% interval is Clopper-Pearson; the Wilson score interval is shown alongside; the
interval "by patient" allows for several lesions of the same patient being alike (logistic model
with robust variance grouped by patient) and is not given when all or no lesions were true
negatives or fewer than two patients contribute.</p>
<p>Survival is counted from the liver operation (the second stage of a two-stage resection) in
patients with at least one lesion that disappeared on both CT and MRI, comparing those whose
disappeared lesions were all removed with those who had some left in place (the reference group).
Medians and their 95% intervals come from Kaplan-Meier curves (NE: not reached); the hazard ratio
from a Cox model with the strategy as the only covariate; p from the log-rank test. A hazard ratio
below 1 means fewer events when all disappeared lesions were removed.</p>
"""


def write_report(results, patients, out_dir):
    """Write ``km_rfs.png``, ``km_os.png`` and ``report.html`` into ``out_dir``.

    Preconditions: ``results`` comes from :func:`etl.analysis.analyse` (optionally with
    ``run`` and ``quality`` added by the pipeline) computed on the same ``patients``.

    Parameters
    ----------
    results : dict
        Keys ``npv``, ``survival_by_surgical_strategy``, ``comparison``; ``run`` and
        ``quality`` are shown when present.
    patients : pandas.DataFrame
        The survival population used for ``results`` (needed to draw the curves).
    out_dir : str or pathlib.Path
        Created if missing.

    Returns
    -------
    list of pathlib.Path
        The two PNGs and the HTML page.

    Raises
    ------
    ValueError
        When the arm sizes of ``patients`` differ from ``results`` (plots would disagree
        with the tables).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    survival = results["survival_by_surgical_strategy"]
    sizes = {arm: int((patients["strategy"] == arm).sum()) for arm in ARMS}
    if sizes != survival["groups"]:
        raise ValueError(f"patients {sizes} do not match results {survival['groups']}")
    reference = load_dream_reference()

    fits = km_fits(patients)
    paths = [
        plot_km(fits[endpoint], survival["at_risk_times"], ARM_LABELS, label,
                out_dir / file_name)
        for endpoint, (label, file_name) in ENDPOINT_LABELS.items()
    ]
    figures = "".join(
        f'<figure><img src="{file_name}" alt="Kaplan-Meier curves: {label}" width="640">'
        f"<figcaption>{label} by surgical strategy</figcaption></figure>"
        for label, file_name in ENDPOINT_LABELS.values()
    )
    sections = ["<h1>Disappearing liver metastases: registry results compared with DREAM</h1>"]
    if "run" in results:
        sections += ["<h2>Run accounting</h2>", _key_values(results["run"], RUN_ORDER)]
    if "quality" in results:
        sections += ["<h2>Data quality</h2>", _key_values(results["quality"])]
    sections += [
        "<h2>Negative predictive value per lesion group</h2>",
        _npv_section(results["npv"], reference.get("npv", {})),
        "<h2>Survival by surgical strategy</h2>",
        _survival_section(survival, reference.get("survival_by_surgical_strategy", {})),
        figures,
        "<h2>Comparison with DREAM</h2>",
        _comparison_section(results.get("comparison", [])),
        "<h2>Methods</h2>", METHODS,
        f'<p class="note">DREAM figures: {escape(reference.get("source", ""))}</p>',
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>DLM registry report</title>"
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return paths + [html_path]
