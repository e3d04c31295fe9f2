"""Forest plot of the NPV by lesion group and subgroup, against DREAM and the earlier literature.

Why: a clinician reads at a glance whether a subgroup's NPV (and its exact 95% CI) sits near DREAM's
62.5% and inside the 33-80% range of earlier retrospective series. The rows are built apart from the
drawing (:func:`forest_rows`) so the report's table and the figure show the same numbers.
"""
from .subgroups import DIMENSIONS

DIMENSION_LABELS = {
    "ce_ious": "Contrast-enhanced intraoperative ultrasound",
    "mri_protocol": "MRI protocol (DWI and hepatobiliary phase)",
    "baseline_size": "Baseline size",
    "chemo_regimen": "Chemotherapy backbone",
    "chemo_targeted_agent": "Targeted agent",
}
CATEGORY_LABELS = {
    "used": "used", "not_used": "not used", "met": "met", "not_met": "not met", "unknown": "not recorded",
    "lt_10_mm": "< 10 mm", "10_to_19_mm": "10-19 mm", "ge_20_mm": ">= 20 mm",
    "oxaliplatin_and_irinotecan": "oxaliplatin + irinotecan", "oxaliplatin_based": "oxaliplatin-based",
    "irinotecan_based": "irinotecan-based", "fluoropyrimidine_only": "fluoropyrimidine only", "other": "other",
    "anti_vegf": "anti-VEGF", "anti_egfr": "anti-EGFR", "anti_vegf_and_anti_egfr": "anti-VEGF and anti-EGFR",
    "none": "none",
}


def forest_rows(npv, subgroups, group_labels, subgroup_group="ct_and_mri_disappeared"):
    """The plot's rows, top to bottom: every main group, then the subgroups of one group.

    Parameters
    ----------
    npv : dict
        results.json ``npv`` (:func:`etl.analysis.npv.npv_summary`).
    subgroups : dict
        results.json ``npv_subgroups`` (:func:`etl.analysis.npv.npv_subgroups`).
    group_labels : dict of str -> str
        Display name per main group, in display order (groups absent from ``npv`` are skipped).
    subgroup_group : str
        The group whose subgroups are listed (DREAM's primary population).

    Returns
    -------
    list of dict
        ``label``, ``heading`` (True for a title row without numbers: the subgroup block's group,
        then each dimension), ``estimate``,
        ``ci95`` (exact), ``ci95_cluster``, ``true_negative``, ``evaluable``. Subgroup categories
        without an evaluable lesion are left out.
    """
    rows = []

    def add(label, est):
        rows.append({"label": label, "heading": False, "estimate": est["estimate"], "ci95": est["ci95"],
                     "ci95_cluster": est["ci95_cluster"], "true_negative": est["true_negative"],
                     "evaluable": est["true_negative"] + est["residual"]})

    for key, label in group_labels.items():
        if key in npv:
            add(label, npv[key])
    for dimension, cells in subgroups.get(subgroup_group, {}).items():
        present = [(c, cells[c]) for c in DIMENSIONS.get(dimension, cells) if c in cells
                   and cells[c]["true_negative"] + cells[c]["residual"] > 0]
        if not present:
            continue
        if not any(row["heading"] for row in rows):
            rows.append({"label": f"{group_labels.get(subgroup_group, subgroup_group)}, by subgroup:",
                         "heading": True})
        rows.append({"label": DIMENSION_LABELS.get(dimension, dimension), "heading": True})
        for category, est in present:
            add(f"    {CATEGORY_LABELS.get(category, category)}", est)
    return rows


def plot_forest(rows, dream_npv, literature_range, path):
    """Draw the forest plot and save it as PNG.

    Parameters
    ----------
    rows : list of dict
        From :func:`forest_rows`.
    dream_npv : float or None
        DREAM's NPV (vertical dashed line).
    literature_range : sequence of two floats or None
        Range of earlier retrospective series (shaded band).
    path : pathlib.Path
        Output PNG file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = 1.2 + 0.32 * max(len(rows), 1)
    fig = Figure(figsize=(11, height + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if literature_range:
        low, high = literature_range
        ax.axvspan(100 * low, 100 * high, color="tab:green", alpha=0.12,
                   label=f"Earlier series {100 * low:.0f}-{100 * high:.0f}%")
    if dream_npv is not None:
        ax.axvline(100 * dream_npv, color="tab:red", linestyle="--", label=f"DREAM {100 * dream_npv:.1f}%")
    labels = []
    for y, row in enumerate(rows):
        labels.append(row["label"])
        if row["heading"] or row["estimate"] is None:
            continue
        lower, upper = row["ci95"]
        ax.plot([100 * lower, 100 * upper], [y, y], color="tab:blue", linewidth=1.5)
        ax.plot(100 * row["estimate"], y, "s", color="tab:blue", markersize=6)
        ax.text(102, y, f"{row['true_negative']}/{row['evaluable']}", va="center", fontsize="small")
    ax.set_yticks(range(len(rows)), labels)
    for tick, row in zip(ax.get_yticklabels(), rows):
        if row["heading"]:
            tick.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 115)
    ax.set_xticks(range(0, 101, 10))
    ax.set_xlabel("NPV, %  (square: estimate; line: exact 95% CI; right: true negatives / evaluable)")
    ax.grid(axis="x", alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "No evaluable lesions", transform=ax.transAxes, ha="center")
    if literature_range or dream_npv is not None:
        fig.legend(loc="outside upper center", ncols=2, fontsize="small")
    fig.savefig(path, format="png", dpi=100)
    return path
