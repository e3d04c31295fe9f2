"""Kaplan-Meier figure with CI bands and a number-at-risk table underneath.

Why drawn by hand rather than with lifelines' plotting: the at-risk table must show the
same counts as results.json (:func:`etl.analysis.kaplan_meier.at_risk_counts`), and an
explicit Agg canvas keeps the global pyplot state untouched (safe in Airflow workers).
"""
from .kaplan_meier import at_risk_counts


def plot_km(fitters, at_risk_times, labels, ylabel, path):
    """Draw survival curves per arm and save them as PNG.

    Parameters
    ----------
    fitters : dict of str -> lifelines.KaplanMeierFitter
        Fitted curve per arm (arms without patients simply absent).
    at_risk_times : sequence of float
        Months at which the at-risk counts are printed; also the x ticks, and the last one
        ends the x axis (longer follow-up is cut off).
    labels : dict of str -> str
        Display name per arm, in the order the arms should be drawn.
    ylabel : str
        Y-axis label (the endpoint).
    path : pathlib.Path
        Output PNG file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, table = fig.subplots(2, 1, gridspec_kw={"height_ratios": [4, 1]})
    arms = [arm for arm in labels if arm in fitters]
    # the at-risk grid is the display window, so every tick has its counts underneath
    end = max(at_risk_times)
    for colour, arm in zip(("tab:blue", "tab:orange"), arms):
        fitter = fitters[arm]
        curve = fitter.survival_function_.iloc[:, 0]
        band = fitter.confidence_interval_
        ax.step(curve.index, curve.to_numpy(), where="post", color=colour, label=labels[arm])
        ax.fill_between(band.index, band.iloc[:, 0], band.iloc[:, 1], step="post",
                        color=colour, alpha=0.2, linewidth=0)
        censored = fitter.durations[fitter.event_observed == 0]
        ax.plot(censored, fitter.survival_function_at_times(censored).to_numpy(), "|",
                color=colour, markersize=8)
    if not arms:
        ax.text(0.5, 0.5, "No patients", transform=ax.transAxes, ha="center")
    # a small margin left of 0 keeps the first at-risk count clear of the row labels
    ax.set_xlim(-0.03 * end, 1.03 * end)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(list(at_risk_times))
    ax.set_xlabel("Months since hepatectomy")
    ax.set_ylabel(ylabel)
    if arms:
        ax.legend(loc="lower left")
    ax.grid(alpha=0.3)

    table.set_xlim(ax.get_xlim())
    table.set_ylim(-0.5, max(len(arms), 1) - 0.5)
    for row, arm in enumerate(arms):
        counts = at_risk_counts(fitters[arm].durations, at_risk_times)
        for t, count in zip(at_risk_times, counts):
            table.text(t, len(arms) - 1 - row, str(count), ha="center", va="center")
    table.set_yticks(range(len(arms)), [labels[arm] for arm in reversed(arms)])
    table.set_xticks([])
    table.tick_params(axis="y", length=0)
    table.set_title("Number at risk", loc="left", fontsize="medium")
    for spine in table.spines.values():
        spine.set_visible(False)
    fig.savefig(path, format="png", dpi=100)
    return path
