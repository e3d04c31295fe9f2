"""Quality dashboard: one static HTML page per run, `OUT/dashboard.html`.

Why: the people who run the registry need to see at a glance whether a run was published, which checks
failed and since when, which codes did not map, and how many lesions reached each step of DREAM's flow,
also (above all) when the run failed and nothing was published. The page is self-contained (inline CSS
and SVG, no scripts, no network), so it opens from a file share or a CI artifact, and escapes every text
that comes from data.

What must hold: the page holds no patient-level data. It reads only `dlm_run`, `dlm_quality_result` and
`dlm_unmapped_code` (no patient column in any of them) and the lesion flow's counts.

Preconditions: the run's row is in `dlm_run` (the pipeline records it before writing the page); its check
results and unmapped codes are stored when the audit ran.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from pathlib import Path

import sqlalchemy as sa

from etl.registry import Registry

TREND_RUNS = 30      # runs in the trend table and sparkline: this run and the ones before it
HISTORY_RUNS = 10    # runs shown for each failing check's violated %
DATA_DOCS = Path("data_docs") / "index.html"
CHECK_COLUMNS = [("check_name", "Check"), ("check_type", "Type"), ("table_name", "Table"), ("field_name", "Field"),
                 ("severity", "Severity"), ("rows_checked", "Rows checked"), ("rows_violated", "Rows violated"),
                 ("pct_violated", "% violated"), ("threshold_pct", "Threshold %"), ("status", "Status")]
UNMAPPED_COLUMNS = [("source_system", "Source system"), ("source_code", "Source code"), ("field", "FHIR field"),
                    ("reason", "Reason"), ("occurrences", "Occurrences")]
SEVERITY_ORDER = {"critical": 0, "warning": 1}
# DREAM's flow: the main column, then side branches as (key, label, the main box they branch from).
FLOW_MAIN = [("lesions_collected", "Lesions collected"),
             ("disappeared_on_ct", "Disappeared on CT"),
             ("disappeared_on_ct_and_mri", "Disappeared on CT and MRI"),
             ("analysed_ct_and_mri_disappeared", "Analysed (MRI protocol met or not recorded)"),
             ("evaluable_ct_and_mri_disappeared", "Evaluable (true negative or residual)")]
FLOW_SIDE = [("disappeared_on_ct_visible_on_mri", "Disappeared on CT, visible on MRI", 1),
             ("excluded_imaging_protocol_not_met", "MRI protocol not met (DWI, hepatobiliary phase)", 2)]
DASH = "\u2013"

CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 90em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }
td.num { text-align: right; white-space: nowrap; }
th { background: #eee; }
tr.fail-critical td { background: #fbe3e3; }
tr.fail-warning td { background: #fdf3d8; }
tr.current td { font-weight: bold; }
.banner { padding: 0.6em 1em; border-radius: 4px; font-weight: bold; }
.banner.failed { background: #fbe3e3; border: 1px solid #c62828; }
.banner.published { background: #e3f4e4; border: 1px solid #2e7d32; }
.note { color: #555; font-size: 0.9em; }
svg text { font-family: sans-serif; }
"""


@dataclass
class DashboardData:
    """What the page shows; every field is run-level or aggregate (no patient rows)."""

    run: dict                   # this run's dlm_run row
    checks: list[dict]          # this run's dlm_quality_result rows
    runs: list[dict]            # newest first: run_id, started_at, status, checks, failed_critical, failed_warning
    history: dict[tuple[str, str], dict]  # (check_name, run_id) -> pct_violated, status (failing checks only)
    unmapped: list[dict]        # this run's dlm_unmapped_code rows
    lesion_flow: dict | None    # counts from etl.pipeline.lesion_flow; None when the run stopped before the audit
    data_docs: bool             # OUT/data_docs/index.html exists


def read_dashboard_data(registry: Registry, run_id: str, lesion_flow: dict | None, out_dir: Path) -> DashboardData:
    """Read the run, its checks and unmapped codes, and the trend over this run and the ones before it."""
    t = registry.tables
    run, quality, unmapped = t["dlm_run"], t["dlm_quality_result"], t["dlm_unmapped_code"]
    with registry.engine.connect() as conn:
        this = dict(conn.execute(sa.select(run).where(run.c.run_id == run_id)).mappings().one())
        checks = [dict(r) for r in conn.execute(sa.select(quality).where(quality.c.run_id == run_id)
                                                .order_by(quality.c.check_name)).mappings()]
        failed = quality.c.status == "fail"

        def failed_count(severity: str):
            return sa.func.coalesce(sa.func.sum(sa.case((failed & (quality.c.severity == severity), 1), else_=0)), 0)

        runs = [dict(r) for r in conn.execute(
            sa.select(run.c.run_id, run.c.started_at, run.c.status,
                      sa.func.count(quality.c.check_name).label("checks"),
                      failed_count("critical").label("failed_critical"),
                      failed_count("warning").label("failed_warning"))
            .select_from(run.outerjoin(quality, quality.c.run_id == run.c.run_id))
            .where(run.c.started_at <= this["started_at"])
            .group_by(run.c.run_id, run.c.started_at, run.c.status)
            .order_by(run.c.started_at.desc(), run.c.run_id.desc())
            .limit(TREND_RUNS)).mappings()]
        failing = {c["check_name"] for c in checks if c["status"] == "fail"}
        recent = [r["run_id"] for r in runs[:HISTORY_RUNS]]
        history = {}
        if failing:
            for row in conn.execute(sa.select(quality.c.check_name, quality.c.run_id, quality.c.pct_violated,
                                              quality.c.status).where(quality.c.run_id.in_(recent))).mappings():
                if row["check_name"] in failing:
                    history[(row["check_name"], row["run_id"])] = {"pct_violated": row["pct_violated"],
                                                                   "status": row["status"]}
        codes = [dict(r) for r in conn.execute(
            sa.select(*(unmapped.c[name] for name, _ in UNMAPPED_COLUMNS)).where(unmapped.c.run_id == run_id)
            .order_by(unmapped.c.occurrences.desc(), unmapped.c.source_system, unmapped.c.source_code,
                      unmapped.c.field)).mappings()]
    return DashboardData(this, checks, runs, history, codes, lesion_flow, (out_dir / DATA_DOCS).exists())


def write_dashboard(registry: Registry, out_dir: Path, run_id: str, lesion_flow: dict | None) -> Path:
    """Write `out_dir/dashboard.html` for `run_id`; returns its path.

    Parameters: `lesion_flow` is the run's lesion flow (results.json `lesion_flow`; for a failed run the
    audited, unpublished counts), or None when the run stopped before the audit.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dashboard.html"
    path.write_text(render_dashboard(read_dashboard_data(registry, run_id, lesion_flow, out_dir)), encoding="utf-8")
    return path


# --- HTML ----------------------------------------------------------------------------------------------------

def _text(value) -> str:
    return DASH if value is None else escape(str(value))


def _identifier(value) -> str:
    """Escaped, with line-break opportunities after `:`, `.`, `_` and inside camelCase (long check names)."""
    return DASH if value is None else re.sub(r"([:._]|[a-z](?=[A-Z]))", r"\1<wbr>", escape(str(value)))


def _pct(value) -> str:
    return DASH if value is None else f"{value:.2f}"


def _time(value) -> str:
    return DASH if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _table(header: list[str], rows: list[tuple[str, list[str]]], numeric=(), table_id: str | None = None) -> str:
    """`rows` are (row class, already escaped cells); `numeric` the column indexes aligned right."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        (f'<tr class="{css}">' if css else "<tr>")
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells))
        + "</tr>" for css, cells in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _check_order(check: dict) -> tuple:
    """Critical failures, then warning failures (then any other severity's), then passes."""
    if check["status"] == "fail":
        return 0, SEVERITY_ORDER.get(check["severity"], len(SEVERITY_ORDER)), check["check_name"]
    return 1, 0, check["check_name"]


def _check_rows(checks: list[dict]) -> list[tuple[str, list[str]]]:
    rows = []
    for check in checks:
        css = f"fail-{check['severity']}" if check["status"] == "fail" else "pass"
        cells = [_pct(check[k]) if k in ("pct_violated", "threshold_pct") else
                 _identifier(check[k]) if k in ("check_name", "check_type", "table_name", "field_name") else _text(check[k])
                 for k, _ in CHECK_COLUMNS]
        rows.append((escape(css), cells))
    return rows


def summarise(checks: list[dict]) -> dict:
    """Counts of this run's stored checks; `publishable` is None when no check ran."""
    failed = [c for c in checks if c["status"] == "fail"]
    critical = sum(c["severity"] == "critical" for c in failed)
    return {"checks": len(checks), "passed": len(checks) - len(failed), "failed_critical": critical,
            "failed_warning": sum(c["severity"] == "warning" for c in failed),
            "publishable": (critical == 0) if checks else None}


def _header(data: DashboardData) -> str:
    run = data.run
    published = run["status"] == "published"
    banner = ('<p class="banner published">Published.</p>' if published else
              f'<p class="banner failed">Not published (run {_text(run["status"])}): the registry keeps what it '
              "published before.</p>")
    facts = [("Run", _text(run["run_id"])), ("Source", _text(run["source"])), ("Started", _time(run["started_at"])),
             ("Finished", _time(run["finished_at"])), ("Status", _text(run["status"])),
             ("Message", _text(run["message"]))]
    return banner + _table(["Item", "Value"], [("", [escape(k), v]) for k, v in facts], table_id="run")


def _checks_section(data: DashboardData) -> str:
    s = summarise(data.checks)
    publishable = DASH if s["publishable"] is None else ("yes" if s["publishable"] else "no")
    summary = _table(["Checks", "Passed", "Failed critical", "Failed warning", "Publishable"],
                     [("", [str(s["checks"]), str(s["passed"]), str(s["failed_critical"]), str(s["failed_warning"]),
                            publishable])], numeric={0, 1, 2, 3}, table_id="quality-summary")
    if not data.checks:
        return summary + '<p class="note">No check results were stored for this run (it stopped before the audit).</p>'
    ordered = sorted(data.checks, key=_check_order)
    failures = [c for c in ordered if c["status"] == "fail"]
    passes = [c for c in ordered if c["status"] != "fail"]
    header = [label for _, label in CHECK_COLUMNS]
    numeric = {5, 6, 7, 8}
    failed = (_table(header, _check_rows(failures), numeric, "failed-checks") if failures
              else '<p id="failed-checks">No check failed.</p>')
    passed = (f"<details><summary>{len(passes)} passed checks</summary>"
              f"{_table(header, _check_rows(passes), numeric, 'passed-checks')}</details>") if passes else ""
    return summary + "<h3>Failed checks</h3>" + failed + passed


def _sparkline(runs: list[dict]) -> str:
    """Stacked bars of failed critical (red) and warning (amber) checks per run, oldest on the left."""
    bar, gap, height = 12, 4, 48
    top = max([r["failed_critical"] + r["failed_warning"] for r in runs] + [1])
    width = len(runs) * (bar + gap) + gap
    shapes = []
    for i, r in enumerate(reversed(runs)):
        x = gap + i * (bar + gap)
        critical = height * r["failed_critical"] / top
        warning = height * r["failed_warning"] / top
        title = escape(f"{_time(r['started_at'])} ({r['status']}): {r['failed_critical']} critical, "
                       f"{r['failed_warning']} warning failed of {r['checks']} checks")
        shapes.append(
            f"<g><title>{title}</title>"
            f'<rect x="{x}" y="{height - critical - warning:.1f}" width="{bar}" height="{warning:.1f}" fill="#e0a800"/>'
            f'<rect x="{x}" y="{height - critical:.1f}" width="{bar}" height="{critical:.1f}" fill="#c62828"/>'
            f'<rect x="{x}" y="{height + 2}" width="{bar}" height="3" '
            f'fill="{"#2e7d32" if r["status"] == "published" else "#999"}"/></g>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 6}" role="img" '
            f'aria-label="Failed checks per run, oldest to newest">{"".join(shapes)}</svg>'
            '<p class="note">Failed checks per run, oldest on the left: critical (red) and warning (amber); '
            "the mark below each bar is green when the run was published.</p>")


def _trends_section(data: DashboardData) -> str:
    run_id = data.run["run_id"]
    rows = [("current" if r["run_id"] == run_id else "",
             [_time(r["started_at"]), _text(r["status"]), str(r["checks"]), str(r["failed_critical"]),
              str(r["failed_warning"])]) for r in data.runs]
    table = _table(["Started", "Status", "Checks", "Failed critical", "Failed warning"], rows, {2, 3, 4}, "runs")
    out = (f"<p class=\"note\">This run (bold) and up to {TREND_RUNS - 1} runs before it, newest first.</p>"
           + _sparkline(data.runs) + table)
    failing = sorted((c for c in data.checks if c["status"] == "fail"), key=_check_order)
    if failing:
        recent = data.runs[:HISTORY_RUNS]
        header = ["Check"] + [_time(r["started_at"]) for r in recent]
        rows = []
        for check in failing:
            cells = [_identifier(check["check_name"])]
            for r in recent:
                seen = data.history.get((check["check_name"], r["run_id"]))
                cells.append(DASH if seen is None else f"{_pct(seen['pct_violated'])} ({_text(seen['status'])})")
            rows.append((escape(f"fail-{check['severity']}"), cells))
        out += ("<h3>Failing checks over the latest runs</h3><p class=\"note\">% violated (status) per run, "
                f"newest first; {DASH}: the check did not run.</p>"
                + _table(header, rows, set(range(1, len(header))), "failing-history"))
    return out


def _unmapped_section(data: DashboardData) -> str:
    if not data.unmapped:
        return '<p id="unmapped-codes">No unmapped codes.</p>'
    rows = [("", [_text(u[k]) for k, _ in UNMAPPED_COLUMNS]) for u in data.unmapped]
    return (f'<p class="note">{len(data.unmapped)} codes stored with concept_id 0 in this run.</p>'
            + _table([label for _, label in UNMAPPED_COLUMNS], rows, {4}, "unmapped-codes"))


def _flow_box(key: str, label: str, counts: dict | None, x: int, y: int, width: int, height: int) -> str:
    if counts is None:
        figures = "not computed"
    else:
        figures = f"{counts['lesions']} lesions, {counts['patients']} patients"
    return (f'<g id="flow-{escape(key)}"><rect x="{x}" y="{y}" width="{width}" height="{height}" rx="4" '
            f'fill="#f4f6fb" stroke="#456"/>'
            f'<text x="{x + width / 2}" y="{y + 22}" text-anchor="middle" font-size="14">{escape(label)}</text>'
            f'<text x="{x + width / 2}" y="{y + 42}" text-anchor="middle" font-size="14" font-weight="bold">'
            f"{escape(figures)}</text></g>")


def _arrow(x1: float, y1: float, x2: float, y2: float) -> str:
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#456" stroke-width="1.5" marker-end="url(#arrow)"/>'


def flow_svg(flow: dict) -> str:
    """DREAM's lesion flow as boxes: the main column top-down, side branches to the right."""
    width, height, step, side_x, left = 330, 56, 90, 420, 10
    parts = []
    for i, (key, label) in enumerate(FLOW_MAIN):
        parts.append(_flow_box(key, label, flow.get(key), left, 10 + i * step, width, height))
        if i:
            parts.append(_arrow(left + width / 2, 10 + (i - 1) * step + height, left + width / 2, 10 + i * step - 2))
    for key, label, anchor in FLOW_SIDE:
        y = 10 + anchor * step
        parts.append(_flow_box(key, label, flow.get(key), side_x, y, width, height))
        parts.append(_arrow(left + width, y + height / 2, side_x - 2, y + height / 2))
    total_height = 20 + (len(FLOW_MAIN) - 1) * step + height
    marker = ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
              'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#456"/></marker></defs>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{side_x + width + 10}" height="{total_height}" '
            f'role="img" aria-label="Lesion flow">{marker}{"".join(parts)}</svg>')


def _flow_section(data: DashboardData) -> str:
    if data.lesion_flow is None:
        return '<p class="note">Not available: the run stopped before the audit.</p>'
    note = ("" if data.run["status"] == "published" else
            '<p class="banner failed">Audited data, not published.</p>')
    return (note + flow_svg(data.lesion_flow)
            + '<p class="note">Side boxes are subsets of the box they branch from. Patients: distinct patients '
              "with at least one lesion in the box.</p>")


def render_dashboard(data: DashboardData) -> str:
    """The whole page as a string (no I/O)."""
    published = data.run["status"] == "published"
    flow_title = "Lesion flow" + ("" if published else " (audited data, not published)")
    sections = [
        "<h1>DLM registry: quality dashboard</h1>", _header(data),
        "<h2>Quality checks of this run</h2>", _checks_section(data),
        "<h2>Trends over runs</h2>", _trends_section(data),
        "<h2>Unmapped codes</h2>", _unmapped_section(data),
        f"<h2>{escape(flow_title)}</h2>", _flow_section(data),
    ]
    if data.data_docs:
        sections.append(f'<p><a href="{DATA_DOCS.as_posix()}">great-expectations Data Docs</a> of this run.</p>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>DLM registry: quality dashboard</title>"
            f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n")
