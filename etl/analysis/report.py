"""Human-readable report: one self-contained HTML page, its figures (PNG) and a PDF copy.

Why: clinicians read the registry's results next to DREAM's, not results.json. The page
needs no network (inline CSS and SVG, images by relative name) and escapes every text that
comes from data, since site names and codes arrive from outside.
"""
from html import escape
from pathlib import Path

from .forest_plot import CATEGORY_LABELS, DIMENSION_LABELS, forest_rows, plot_forest
from .km_plot import plot_km
from .npv import CE_IOUS_KEY, PROTOCOL_MET_KEY
from .pdf import render_pdf
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
    PROTOCOL_MET_KEY: "Disappeared on CT and MRI, MRI protocol met (as DREAM analysed)",
    CE_IOUS_KEY: "Disappeared on CT and MRI, contrast-enhanced intraoperative ultrasound",
    "ct_disappeared_mri_visible": "Disappeared on CT, visible on MRI",
}
SENSITIVITY_LABELS = {
    "followup_window_12_months": "Follow-up window 12 months",
    "followup_window_24_months": "Follow-up window 24 months",
    "unevaluable_as_true_negative": "Unevaluable lesions counted as true negatives (best case)",
    "unevaluable_as_residual": "Unevaluable lesions counted as residual (worst case)",
}
SENSITIVITY_GROUPS = ("ct_disappeared", "ct_and_mri_disappeared", "ct_disappeared_mri_visible")
FLOW_ROWS = (  # results.json lesion_flow key, DREAM lesion_flow key, label
    ("lesions_collected", "lesions_collected", "Lesions collected"),
    ("disappeared_on_ct", "disappeared_on_ct", "Disappeared on CT"),
    ("disappeared_on_ct_and_mri", "disappeared_on_ct_and_mri", "Disappeared on CT and MRI"),
    ("disappeared_on_ct_visible_on_mri", "disappeared_on_ct_visible_on_mri", "Disappeared on CT, visible on MRI"),
    ("excluded_imaging_protocol_not_met", "excluded_imaging_protocol_not_met", "MRI protocol not met"),
    ("analysed_ct_and_mri_disappeared", "analysed_ct_and_mri_disappeared", "Analysed (CT and MRI disappeared)"),
    ("evaluable_ct_and_mri_disappeared", None, "Evaluable (true negative or residual)"),
)
FIGURES = {"forest": "forest_npv.png"}
RUN_ORDER = ("resources_read", "loaded", "quarantined", "excluded")
DASH = "\u2013"

CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 75em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
.note { color: #555; font-size: 0.9em; }
figure { margin: 1em 0; }
@media print { body { margin: 0; } h2 { break-after: avoid; } figure, table { break-inside: avoid; } }
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


def _flow_section(flow, dream_flow):
    from etl.dashboard import flow_svg

    def dream_count(key):
        if key is None:
            return DASH, DASH
        if key == "lesions_collected":
            return dream_flow.get("lesions_collected", DASH), dream_flow.get("patients_collected", DASH)
        figure = dream_flow.get(key, {})
        return figure.get("lesions", DASH), figure.get("patients", DASH)

    rows = []
    for ours_key, dream_key, label in FLOW_ROWS:
        ours = flow.get(ours_key) or {}
        rows.append([escape(label), _cell(ours.get("lesions", DASH)), _cell(ours.get("patients", DASH)),
                     *(_cell(v) for v in dream_count(dream_key))])
    table = _table(["Box", "Lesions", "Patients", "DREAM lesions", "DREAM patients"], rows)
    return flow_svg(flow) + table


def _subgroup_section(subgroups, group="ct_and_mri_disappeared"):
    rows = []
    for dimension, cells in subgroups.get(group, {}).items():
        for category, est in cells.items():
            if not est["lesions"]:
                continue
            rows.append([
                escape(DIMENSION_LABELS.get(dimension, dimension)), escape(CATEGORY_LABELS.get(category, category)),
                str(est["lesions"]), str(est["patients"]),
                f"{est['true_negative']}/{est['true_negative'] + est['residual']}", str(est["unevaluable"]),
                _with_ci(est["estimate"], est["ci95"], _pct), _ci(est["ci95_cluster"], _pct),
            ])
    header = ["Subgroup", "Category", "Lesions", "Patients", "True negative/evaluable", "Unevaluable",
              "NPV (exact 95% CI)", "95% CI by patient"]
    return _table(header, rows) if rows else '<p class="note">No lesions in any subgroup.</p>'


def _sensitivity_section(sensitivity, main):
    rows = [["As registered (main analysis)",
             *(_with_ci(main[g]["estimate"], main[g]["ci95"], _pct) + f" [{main[g]['unevaluable']}]"
               for g in SENSITIVITY_GROUPS if g in main)]]
    for key, summary in sensitivity.items():
        if summary is None:
            rows.append([escape(SENSITIVITY_LABELS.get(key, key)), *(["not available"] * len(SENSITIVITY_GROUPS))])
            continue
        rows.append([escape(SENSITIVITY_LABELS.get(key, key)),
                     *(_with_ci(summary[g]["estimate"], summary[g]["ci95"], _pct) + f" [{summary[g]['unevaluable']}]"
                       for g in SENSITIVITY_GROUPS if g in summary)])
    header = ["Assumption", *(escape(GROUP_LABELS[g]) for g in SENSITIVITY_GROUPS)]
    return _table(header, rows) + ('<p class="note">NPV (exact 95% CI) [unevaluable lesions]. The follow-up '
                                   "windows re-apply the outcome rule to lesions judged by follow-up imaging.</p>")


def _hr_cell(arm_figures, treated):
    if not treated:
        return "reference"
    return _with_ci(arm_figures.get("hr"), arm_figures.get("hr_ci95"), _hr)


def _ph_cell(test):
    if not test or test.get("p_value") is None:
        return DASH
    verdict = "violated" if test.get("violated") else "holds"
    return f"{_p(test['p_value'])} ({verdict})"


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
            _ph_cell(arm_ours.get("ph_test")) if treated else "",
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
              "Log-rank p", "Proportional hazards (Schoenfeld p)", "DREAM events/total",
              "DREAM median (95% CI)", "DREAM HR (95% CI)"]
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
            escape((row.get("test") or {}).get("method", DASH)), _p((row.get("test") or {}).get("p_value")),
        ])
    header = ["Metric", "Ours (95% CI)", "DREAM", "DREAM 95% CI or range", "DREAM in our CI",
              "Ours in DREAM CI/range", "Test against DREAM", "p"]
    return _table(header, out)


METHODS = """
<h3>Which lesions</h3>
<p>A lesion is one liver metastasis followed from the imaging before chemotherapy. It
<em>disappeared</em> on a scan type (CT, MRI) when it was visible before chemotherapy and could no
longer be seen on the last scan of that type after chemotherapy and before the liver operation. The
main group is the lesions gone on both CT and MRI. DREAM analysed only those whose MRI after
chemotherapy included diffusion-weighted and liver-specific (hepatobiliary) images; that group is shown
separately as "MRI protocol met". The flow diagram counts lesions at each step, with DREAM's counts
beside ours.</p>
<h3>Was the lesion really gone?</h3>
<p>A disappeared lesion is <em>residual</em> when the pathologist found cancer cells where it had been, or
when a follow-up scan showed it again within the follow-up window; it is a <em>true negative</em> when
pathology found no cancer cells, or when follow-up scans reached the end of the window without it
coming back. Otherwise it is <em>unevaluable</em> (for example, follow-up too short). The negative
predictive value (NPV) is the share of true negatives among the lesions that could be judged:
true negatives divided by true negatives plus residuals. Unevaluable lesions are left out; the
sensitivity analyses show how far they could move the result (all counted as true negatives, or all as
residual) and what a 12- or 24-month window would give.</p>
<h3>How sure are we?</h3>
<p>Each NPV has three 95% confidence intervals. The exact (Clopper-Pearson) interval is the usual
conservative one and is the one compared with DREAM. The Wilson interval is a slightly narrower
alternative. The interval "by patient" allows for lesions of the same patient tending to behave alike
(a logistic model whose uncertainty is computed patient by patient); it is not given when all or no
lesions were true negatives or fewer than two patients contribute. In a simulation of 500 cohorts
(docs/npv_coverage.md) the by-patient interval held its 95% coverage even when lesions of one patient
were strongly alike, while the exact interval dropped to about 90% in that case. Subgroups (use of
contrast-enhanced ultrasound during the operation, MRI protocol, size before chemotherapy, the
chemotherapy backbone and any targeted drug) are shown in the forest plot; they are small and describe
rather than prove.</p>
<h3>Survival</h3>
<p>Survival is counted in months from the liver operation (the second stage of a two-stage resection)
in patients with at least one lesion gone on CT and MRI. Patients whose disappeared lesions were all
removed (resected or ablated) are compared with those who had some left in place, the reference group.
Relapse-free survival ends at the first recurrence or death; overall survival at death; patients
without the event are counted until their last contact. Curves are Kaplan-Meier estimates, with the
number of patients still followed printed under them; medians come with 95% intervals (NE: not
reached). The hazard ratio comes from a Cox model with the strategy as the only factor; below 1 means
fewer events when all disappeared lesions were removed. The log-rank test gives p for a difference.
The Cox model assumes the ratio stays the same over time; the Schoenfeld residual test checks this, and
"violated" (p &lt; 0.05) means the single hazard ratio summarises a changing effect.</p>
<h3>Comparison with DREAM</h3>
<p>Every NPV, median and hazard ratio DREAM published is set beside ours, with whether DREAM's value lies
inside our interval and ours inside DREAM's (or inside the 33-80% range of earlier retrospective
series). Our NPV is tested against DREAM's with an exact binomial test (DREAM's value taken as fixed).
Hazard ratios are compared on the log scale with a z test, taking DREAM's standard error from its
published 95% interval; the two studies are assumed to hold different patients. A p above 0.05 means
no evidence that our registry differs from DREAM, not proof that it is the same.</p>
"""


def write_report(results, patients, out_dir):
    """Write the figures, ``report.html`` and, when Chromium is installed, ``report.pdf`` into ``out_dir``.

    Preconditions: ``results`` comes from :func:`etl.analysis.analyse` (optionally with
    ``run``, ``quality`` and ``lesion_flow`` added by the pipeline) computed on the same ``patients``.

    Parameters
    ----------
    results : dict
        Keys ``npv``, ``survival_by_surgical_strategy``, ``comparison``; ``npv_subgroups``,
        ``npv_sensitivity``, ``lesion_flow``, ``run`` and ``quality`` are shown when present.
    patients : pandas.DataFrame
        The survival population used for ``results`` (needed to draw the curves).
    out_dir : str or pathlib.Path
        Created if missing.

    Returns
    -------
    list of pathlib.Path
        The PNGs (Kaplan-Meier per endpoint, forest plot), the HTML page and the PDF if written.

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
    dream_npv = reference.get("npv", {})

    fits = km_fits(patients)
    paths = [
        plot_km(fits[endpoint], survival["at_risk_times"], ARM_LABELS, label,
                out_dir / file_name)
        for endpoint, (label, file_name) in ENDPOINT_LABELS.items()
    ]
    rows = forest_rows(results["npv"], results.get("npv_subgroups", {}), GROUP_LABELS)
    paths.append(plot_forest(rows, dream_npv.get("ct_and_mri_disappeared", {}).get("estimate"),
                             dream_npv.get("prior_retrospective_range"), out_dir / FIGURES["forest"]))
    km_figures = "".join(
        f'<figure><img src="{file_name}" alt="Kaplan-Meier curves: {label}" width="640">'
        f"<figcaption>{label} by surgical strategy; numbers at risk under the curves</figcaption></figure>"
        for label, file_name in ENDPOINT_LABELS.values()
    )
    forest = (f'<figure><img src="{FIGURES["forest"]}" alt="Forest plot of the NPV by group and subgroup" '
              'width="800"><figcaption>NPV with exact 95% CI by group and, for lesions gone on CT and MRI, by '
              "subgroup; dashed line: DREAM; band: earlier retrospective series</figcaption></figure>")
    sections = ["<h1>Disappearing liver metastases: registry results compared with DREAM</h1>"]
    if "run" in results:
        sections += ["<h2>Run accounting</h2>", _key_values(results["run"], RUN_ORDER)]
    if "quality" in results:
        sections += ["<h2>Data quality</h2>", _key_values(results["quality"])]
    if "lesion_flow" in results:
        sections += ["<h2>Lesion flow</h2>", _flow_section(results["lesion_flow"], reference.get("lesion_flow", {}))]
    sections += [
        "<h2>Negative predictive value per lesion group</h2>",
        _npv_section(results["npv"], dream_npv),
        forest,
    ]
    if "npv_subgroups" in results:
        sections += ["<h3>Subgroups of lesions gone on CT and MRI</h3>", _subgroup_section(results["npv_subgroups"])]
    if "npv_sensitivity" in results:
        sections += ["<h3>Sensitivity analyses</h3>", _sensitivity_section(results["npv_sensitivity"], results["npv"])]
    sections += [
        "<h2>Survival by surgical strategy</h2>",
        _survival_section(survival, reference.get("survival_by_surgical_strategy", {})),
        km_figures,
        "<h2>Comparison with DREAM</h2>",
        _comparison_section(results.get("comparison", [])),
        "<h2>Methods in plain words</h2>", METHODS,
        f'<p class="note">DREAM figures: {escape(reference.get("source", ""))}</p>',
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>DLM registry report</title>"
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    paths.append(html_path)
    pdf = render_pdf(html_path, out_dir / "report.pdf")
    return paths + ([pdf] if pdf else [])
