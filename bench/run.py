"""Benchmark (issue #9): in one run on one machine, per cohort size,
(a) the physical floor: read + `json.loads` every NDJSON line + COPY as many rows into PostgreSQL (bench/floor.py);
(b) the full ETL, `dlmreg run`, into PostgreSQL and into SQLite, each into a fresh database, and then an
    incremental run into the same registry after 1% of the resources changed;
(c) a naive baseline (one fhir.resources parse and one ORM insert + commit per resource) on a sample,
    extrapolated to the whole cohort (bench/naive.py).
Each step runs in its own process: wall time is that process's, interpreter start-up included, and peak
RSS is its own (`os.wait4`), never the PostgreSQL server's. Prints one JSON line per measurement and
writes BENCHMARKS.md with the machine description and the targets.

    python bench/run.py                                    # 1,000, 10,000 and 50,000 patients
    python bench/run.py --patients 1000 10000              # some sizes
    python bench/run.py --quick                            # smoke run: 200 patients
    python bench/run.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Without `--pg-url` a private PostgreSQL cluster is started on a free loopback port (bench/pgcluster.py)
and stopped at the end. The code measured is a snapshot of a git commit (`--ref`, default HEAD, taken with
`git archive`), so edits made in the working tree while a long benchmark runs do not leak into it;
`--working-tree` measures the working tree as it is. No timing assertions live in the tests.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from pgcluster import PrivateCluster, drop_database, fresh_database, server_version  # noqa: E402

REGISTRIES = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}
CODE_PATHS = ("etl", "registry_schema", "quality_checks", "mappings")
NOTES_MARKER = "<!-- Everything below this line is kept by bench/run.py when it rewrites this file. -->"
CHANGED_NARRATIVE = {"status": "generated",
                     "div": '<div xmlns="http://www.w3.org/1999/xhtml">changed by bench/run.py</div>'}

# target: (label, comparison, bound)
TARGETS = {
    "etl_over_floor": ("full ETL (PostgreSQL) within 3x of the floor", "<=", 3.0),
    "naive_over_etl": ("at least 10x faster than naive (naive / ETL PostgreSQL)", ">=", 10.0),
    "rss_growth": ("peak RSS at 50,000 patients <= 1.5x that at 1,000", "<=", 1.5),
    "incremental_over_full": ("incremental run after a 1% change < 5% of the full run (file snapshot)", "<", 0.05),
    "delta_over_full": ("incremental run after a 1% change < 5% of the full run (changes only, `--delta`)", "<",
                        0.05),
    "patients_over_full": ("incremental run after a 1% change < 5% of the full run (1% of the patients, changes "
                           "only)", "<", 0.05),
}
INCREMENTAL_KEYS = ("incremental_over_full", "delta_over_full", "patients_over_full")


# --- measuring ------------------------------------------------------------------------------------------

def measure(command: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> dict:
    """Run `command` in its own process; wall seconds, peak RSS (MiB) of that process, exit code, stdout.

    Output goes to files (`log`.out / .err), so a chatty child can never block on a full pipe.
    """
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    load = os.getloadavg()[0]  # other work on the machine slows every row; recorded, not corrected for
    with out.open("w") as stdout, err.open("w") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=cwd, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "exit_code": code, "load_before": load,
            "stdout": out.read_text(), "error": None if code == 0 else err.read_text()[-1500:]}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def code_under_test(work: Path, ref: str | None) -> tuple[dict, str]:
    """(environment for the ETL processes, description of the code measured).

    With a ref, the code is `git archive REF` unpacked under `work` and put first on PYTHONPATH (ahead of
    the editable install, whose finder comes after the path finder).
    """
    env = dict(os.environ)
    if ref is None:
        try:
            commit = _git("rev-parse", "HEAD").strip()
        except (OSError, subprocess.CalledProcessError):
            return env, "working tree (not a git checkout)"
        dirty = sorted(line.split(maxsplit=1)[1] for line in _git("status", "--porcelain", "--", *CODE_PATHS).splitlines())
        state = f", with uncommitted changes in {', '.join(dirty)}" if dirty else ""
        return env, f"working tree at commit `{commit[:12]}`{state}"
    commit = _git("rev-parse", ref + "^{commit}").strip()
    code = work / "code"
    code.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    where = subprocess.run([sys.executable, "-c", "import etl; print(etl.__file__)"], env=env, cwd=code,
                           check=True, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(code)):
        raise SystemExit(f"the snapshot is not the code imported ({where}); use --working-tree")
    return env, f"commit `{commit[:12]}` (`git archive` snapshot)"


def _changed(resource: dict, version: int) -> str:
    """The NDJSON line of `resource` as version `version`: a later `meta.lastUpdated` and a narrative (`text`), a
    field the registry does not map, so its hash changes and its meaning does not."""
    resource["meta"] = {**(resource.get("meta") or {}), "versionId": str(version),
                        "lastUpdated": f"2026-01-0{min(version, 9)}T00:00:00Z"}
    resource["text"] = {**CHANGED_NARRATIVE, "div": CHANGED_NARRATIVE["div"].replace(
        "bench/run.py", f"bench/run.py (version {version})")}
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False) + "\n"


def change_share(source: Path, target: Path, share: float = 0.01, seed: int = 9, version: int = 2,
                 delta: Path | None = None) -> int:
    """Copy a cohort with `share` of its resources changed; returns how many.

    A changed resource gets a new version (`meta.versionId` `version`, a later `meta.lastUpdated`) and a
    narrative (`text`), a field the registry does not map: its hash changes, its meaning does not. The choice
    is deterministic (seeded), so every size and registry sees the same kind of change. `delta`: also write
    the changed resources alone there (what a `_since` export of the change holds).
    """
    if delta is not None:
        delta.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    target.mkdir(parents=True, exist_ok=True)
    changed = 0
    for path in sorted(source.iterdir()):
        if not path.name.endswith(".ndjson"):
            shutil.copy(path, target / path.name)
            continue
        with contextlib.ExitStack() as files:
            lines = files.enter_context(path.open(encoding="utf-8"))
            out = files.enter_context((target / path.name).open("w", encoding="utf-8"))
            only = files.enter_context((delta / path.name).open("w", encoding="utf-8")) if delta else None
            for line in lines:
                if line.strip() and rng.random() < share:
                    line = _changed(json.loads(line), version)
                    changed += 1
                    if only:
                        only.write(line)
                out.write(line)
    return changed


def _owner(resource: dict) -> str | None:
    """The FHIR id of the patient a resource of the synthetic cohort belongs to."""
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    reference = (resource.get("subject") or resource.get("patient") or {}).get("reference") or ""
    return reference.removeprefix("Patient/") or None


def change_patients(source: Path, delta: Path, share: float = 0.01, seed: int = 11, version: int = 4) -> int:
    """Write to `delta` every resource of `share` of the patients (at least one), changed as by `change_share`:
    what a `_lastUpdated` pull holds when the changes concentrate on the patients with new activity. Returns
    how many resources. The patients are those with the smallest seeded hash of their id (deterministic)."""
    ids = [json.loads(line)["id"] for path in source.glob("*.ndjson") for line in path.open(encoding="utf-8")
           if line.strip() and '"resourceType":"Patient"' in line.replace(" ", "")]
    rank = sorted(ids, key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).digest())
    chosen = set(rank[:max(1, round(share * len(ids)))])
    delta.mkdir(parents=True, exist_ok=True)
    changed = 0
    for path in sorted(source.glob("*.ndjson")):
        with path.open(encoding="utf-8") as lines, (delta / path.name).open("w", encoding="utf-8") as out:
            for line in lines:
                if not line.strip():
                    continue
                resource = json.loads(line)
                if _owner(resource) in chosen:
                    out.write(_changed(resource, version))
                    changed += 1
    return changed


# --- one cohort size ------------------------------------------------------------------------------------

def _row(patients: int, step: str, registry: str | None, run: dict, **extra) -> dict:
    row = {"patients": patients, "step": step, "registry": registry, "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
           "peak_rss_mib": run["peak_rss_mib"], "exit_code": run["exit_code"], "load_before": run["load_before"],
           **extra}
    if run["error"]:
        row["error"] = run["error"].strip().splitlines()[-1][:300] if run["error"].strip() else f"exit {run['exit_code']}"
    resources = row.get("resources")
    row["resources_per_s"] = resources / row["wall_s"] if resources and not run["error"] else None
    print(json.dumps(row), flush=True)
    return row


def _results(out: Path) -> dict:
    path = out / "results.json"
    return json.loads(path.read_text())["run"] if path.exists() else {}


def bench_size(patients: int, registries: list[str], server_url: str, work: Path, etl_env: dict,
               naive_sample: int, dlmreg: list[str] | None = None, no_random_changes: bool = False) -> list[dict]:
    """All measurements for one cohort size; the cohort and databases are removed afterwards.

    `no_random_changes`: leave out the two incremental runs after a random 1% of the resources changed (each
    costs about half a full run); the change of 1% of the patients is still measured.

    `dlmreg` is the command measured as the ETL (default `python -m etl.cli`, of the code under test);
    `dlmreg synth` always comes from etl.cli.
    """
    python = sys.executable
    cohort, changed_cohort = work / f"cohort_{patients}", work / f"cohort_{patients}_changed"
    again, delta_cohort = work / f"cohort_{patients}_again", work / f"cohort_{patients}_delta"
    patients_cohort = work / f"cohort_{patients}_patients"
    logs = work / f"logs_{patients}"
    logs.mkdir()
    cli = [python, "-m", "etl.cli"]
    etl_cli = dlmreg or cli
    code_dir = Path(etl_env["PYTHONPATH"].split(os.pathsep)[0]) if "PYTHONPATH" in etl_env else REPO
    rows = []
    synth = measure(cli + ["synth", "--patients", str(patients), "--seed", "1", "--out", str(cohort)],
                    logs / "synth", cwd=code_dir, env=etl_env)
    if synth["error"]:
        raise SystemExit(f"dlmreg synth failed:\n{synth['error']}")
    total = sum(1 for p in cohort.glob("*.ndjson") for line in p.open() if line.strip())
    rows.append(_row(patients, "synth", None, synth, resources=total))

    database = fresh_database(server_url, "floor")
    floor = measure([python, str(BENCH / "floor.py"), "--source", str(cohort), "--pg-url", database],
                    logs / "floor", env=etl_env)
    drop_database(server_url, database)
    inner = json.loads(floor["stdout"]) if not floor["error"] else {}
    rows.append(_row(patients, "floor", "PostgreSQL", floor, resources=inner.get("resources", total),
                     work_s=inner.get("work_s")))

    changed = changed_again = None
    if not no_random_changes:
        changed = change_share(cohort, changed_cohort)
        # A second 1% change on top of the first, of which only the changed resources are given (`--delta`).
        changed_again = change_share(changed_cohort, again, seed=10, version=3, delta=delta_cohort)
        shutil.rmtree(again, ignore_errors=True)
    changed_patients = change_patients(cohort, patients_cohort)
    for registry in registries:
        name = REGISTRIES[registry]
        url = (fresh_database(server_url, "etl") if registry == "postgresql"
               else f"sqlite:///{work / f'registry_{patients}.sqlite'}")
        steps = [("etl", cohort, [], None), ("incremental", changed_cohort, [], changed),
                 ("incremental_delta", delta_cohort, ["--delta"], changed_again),
                 ("incremental_patients", patients_cohort, ["--delta"], changed_patients)]
        for step, source, flags, count in [steps[0], steps[3]] if no_random_changes else steps:
            out = work / f"out_{patients}_{registry}_{step}"
            run = measure(etl_cli + ["run", "--source", str(source), *flags, "--registry", url, "--out", str(out),
                                 "--no-progress"], logs / f"{step}_{registry}", cwd=code_dir, env=etl_env)
            results = _results(out)
            rows.append(_row(patients, step, name, run, resources=results.get("resources_read", count or total),
                             staging_changes=results.get("staging_changes"), changed_resources=count,
                             phase_seconds=results.get("seconds"), phase_peaks=results.get("peak_rss_mib")))
            shutil.rmtree(out, ignore_errors=True)
            if run["error"]:
                break  # an incremental run on a registry whose full run failed measures nothing useful
        if registry == "postgresql":
            drop_database(server_url, url)
        else:
            (work / f"registry_{patients}.sqlite").unlink(missing_ok=True)

    rows.append(_naive_row(patients, cohort, total, server_url, logs, etl_env, naive_sample))
    for directory in (cohort, changed_cohort, delta_cohort, patients_cohort):
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def _naive_row(patients: int, cohort: Path, total: int, server_url: str, logs: Path, etl_env: dict,
               naive_sample: int) -> dict:
    database = fresh_database(server_url, "naive")
    naive = measure([sys.executable, str(BENCH / "naive.py"), "--source", str(cohort), "--pg-url", database,
                     "--sample", str(naive_sample)], logs / "naive", env=etl_env)
    drop_database(server_url, database)
    inner = json.loads(naive["stdout"]) if not naive["error"] else {}
    if inner:
        # Extrapolated from the loop's own time only (imports and sampling left out): the kindest
        # reading of the naive loader, so naive/ETL is if anything understated.
        naive = {**naive, "wall_s": inner["work_s"] * inner["total"] / inner["sample"],
                 "cpu_s": inner["work_cpu_s"] * inner["total"] / inner["sample"]}
    return _row(patients, "naive", "PostgreSQL", naive, resources=inner.get("total", total),
                sample=inner.get("sample"), sample_work_s=inner.get("work_s"), extrapolated=True)


def projected(rows: list[dict], patients: int) -> tuple[float, float] | None:
    """(wall s, peak RSS MiB) an ETL run at `patients` is expected to need: the largest over registries of a
    straight line through the two largest sizes measured (through the origin when only one was)."""
    worst = None
    for name in REGISTRIES.values():
        by_size: dict[int, tuple[float, float]] = {}
        for r in rows:
            if r["step"] in ("etl", "incremental") and r["registry"] == name and not r.get("error"):
                wall, rss = by_size.get(r["patients"], (0.0, 0.0))
                by_size[r["patients"]] = (max(wall, r["wall_s"]), max(rss, r["peak_rss_mib"]))
        points = sorted(by_size.items())[-2:]
        if not points:
            continue
        if len(points) == 1:
            points.insert(0, (0, (0.0, 0.0)))
        (n1, (w1, r1)), (n2, (w2, r2)) = points
        line = tuple(v2 + (v2 - v1) / (n2 - n1) * (patients - n2) for v1, v2 in ((w1, w2), (r1, r2)))
        worst = line if worst is None else (max(worst[0], line[0]), max(worst[1], line[1]))
    return worst


def memory_available_mib() -> float:
    return next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemAvailable")) / 1024


def skip_reason(rows: list[dict], patients: int, max_etl_minutes: float) -> str | None:
    """Why a size should not be run, judged from the sizes already measured (None: run it)."""
    expected = projected(rows, patients)
    if expected is None:
        return None
    wall, rss = expected
    available = memory_available_mib()
    if wall > max_etl_minutes * 60:
        return (f"projected from the smaller sizes, one ETL run would take about {wall / 60:.0f} minutes "
                f"(limit {max_etl_minutes:g}, `--max-etl-minutes`) and peak at about {rss / 1024:.1f} GiB")
    if rss > 0.9 * available:
        return (f"projected from the smaller sizes, one ETL run would peak at about {rss / 1024:.1f} GiB, more "
                f"than 90% of the {available / 1024:.1f} GiB available")
    return None


# --- ratios and the Markdown ----------------------------------------------------------------------------

def _find(rows: list[dict], patients: int, step: str, registry: str | None = None) -> dict | None:
    return next((r for r in rows if r["patients"] == patients and r["step"] == step
                 and (registry is None or r["registry"] == registry) and not r.get("error")), None)


def _ratio(a: dict | None, b: dict | None, key: str = "wall_s") -> float:
    return a[key] / b[key] if a and b and b[key] else math.nan


def ratios(rows: list[dict]) -> list[dict]:
    """Every ratio with its target: one dict per (ratio, size or sizes, registry)."""
    sizes = sorted({r["patients"] for r in rows if r["step"] != "not run"})
    out = []
    for n in sizes:
        floor, naive = _find(rows, n, "floor"), _find(rows, n, "naive")
        for name in REGISTRIES.values():
            etl, incremental = _find(rows, n, "etl", name), _find(rows, n, "incremental", name)
            delta = _find(rows, n, "incremental_delta", name)
            by_patient = _find(rows, n, "incremental_patients", name)
            if not any(r["patients"] == n and r["registry"] == name and r["step"] == "etl" for r in rows):
                continue
            out.append({"key": "etl_over_floor", "patients": n, "registry": name, "value": _ratio(etl, floor),
                        "target": name == "PostgreSQL"})
            out.append({"key": "naive_over_etl", "patients": n, "registry": name, "value": _ratio(naive, etl),
                        "target": name == "PostgreSQL"})
            out.append({"key": "incremental_over_full", "patients": n, "registry": name,
                        "value": _ratio(incremental, etl), "target": True})
            out.append({"key": "delta_over_full", "patients": n, "registry": name,
                        "value": _ratio(delta, etl), "target": True})
            out.append({"key": "patients_over_full", "patients": n, "registry": name,
                        "value": _ratio(by_patient, etl), "target": True})
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for name in REGISTRIES.values():
            if _find(rows, small, "etl", name) or _find(rows, large, "etl", name):
                out.append({"key": "rss_growth", "patients": (small, large), "registry": name,
                            "value": _ratio(_find(rows, large, "etl", name), _find(rows, small, "etl", name),
                                            "peak_rss_mib"),
                            "target": (small, large) == (1000, 50000)})
    for r in out:
        _, comparison, bound = TARGETS[r["key"]]
        value = r["value"]
        r["met"] = (None if math.isnan(value) else
                    {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[comparison])
    return out


def machine(pg_version: str) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return (f"{os.cpu_count()} cores ({cpu}), {memory / 1024 / 1024:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, PostgreSQL {pg_version}")


STEP_LABELS = {
    "floor": "floor: read + json.loads + COPY into PostgreSQL",
    "etl": "ETL {registry} (`dlmreg run`, fresh database)",
    "naive": "naive, PostgreSQL (extrapolated from {sample:,} resources)",
    "incremental": "incremental {registry} (same registry, {changed_resources:,} resources changed)",
    "incremental_delta": "incremental {registry}, changes only (`--delta`, {changed_resources:,} resources)",
    "incremental_patients": "incremental {registry}, 1% of the patients, changes only (`--delta`, "
                            "{changed_resources:,} resources)",
}
STEP_ORDER = [("floor", "PostgreSQL"), ("etl", "PostgreSQL"), ("etl", "SQLite"), ("naive", "PostgreSQL"),
              ("incremental", "PostgreSQL"), ("incremental", "SQLite"), ("incremental_delta", "PostgreSQL"),
              ("incremental_delta", "SQLite"), ("incremental_patients", "PostgreSQL"),
              ("incremental_patients", "SQLite")]
PHASES = {"stage": "stage", "map_load_derive": "map, load, derive", "audit": "audit (indexes, quality checks)",
          "analysis_report": "analysis and report"}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _verdict(r: dict) -> str:
    if r["met"] is None:
        return "not measured"
    return "**met**" if r["met"] else "**not met**"


def _ratio_line(r: dict) -> str:
    _, comparison, bound = TARGETS[r["key"]]
    if r["key"] == "rss_growth":
        name = f"peak RSS of ETL {r['registry']}, {r['patients'][1]:,} / {r['patients'][0]:,} patients"
    else:
        name = {"etl_over_floor": f"ETL {r['registry']} / floor", "naive_over_etl": f"naive / ETL {r['registry']}",
                "incremental_over_full": f"incremental / full, {r['registry']}",
                "delta_over_full": f"incremental (changes only) / full, {r['registry']}",
                "patients_over_full": f"incremental (1% of the patients) / full, {r['registry']}"}[r["key"]]
    target = f"{comparison} {bound:g}" if r["target"] else f"({comparison} {bound:g} applies to PostgreSQL)"
    if r["key"] == "rss_growth" and not r["target"]:
        target = f"({comparison} {bound:g} applies to 50,000 / 1,000)"
    verdict = _verdict(r) if r["target"] else ("within" if r["met"] else "outside") if r["met"] is not None else "n/a"
    digits = 3 if r["key"] in INCREMENTAL_KEYS else 2
    return f"| {name} | {_fmt(r['value'], digits)} | {target} | {verdict} |"


def _load_range(rows: list[dict]) -> str:
    loads = [r["load_before"] for r in rows if "load_before" in r]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"


def _phase_table(size_rows: list[dict]) -> list[str]:
    """Where each ETL run's wall time went and its peak RSS by phase, from its `results.json` (`run.seconds`,
    `run.peak_rss_mib`)."""
    timed = [r for step, registry in STEP_ORDER for r in size_rows
             if (r["step"], r["registry"]) == (step, registry) and r.get("phase_seconds") and not r.get("error")]
    if not timed:
        return []
    lines = ["", "Where the time of each run went (seconds, from its `results.json`; the rest of the wall time is "
             "interpreter start-up, imports and writing results and the dashboard):", "",
             "| step | " + " | ".join(PHASES.values()) + " | rest |", "|---|" + "---:|" * (len(PHASES) + 1)]
    for r in timed:
        phases = r["phase_seconds"]
        cells = [f"{phases[p]:,.1f}" if p in phases else "n/a" for p in PHASES]
        lines.append(f"| {_run_label(r)} | " + " | ".join(cells) + f" | {r['wall_s'] - sum(phases.values()):,.1f} |")
    peaked = [r for r in timed if r.get("phase_peaks")]
    if peaked:
        lines += ["", "Peak RSS of each run's own process at the end of each phase (MiB, from its `results.json`; "
                  "the first phase with the run's final figure is where its peak was; worker processes not "
                  "included):", "", "| step | " + " | ".join(PHASES.values()) + " |", "|---|" + "---:|" * len(PHASES)]
        for r in peaked:
            cells = [f"{r['phase_peaks'][p]:,.0f}" if p in r["phase_peaks"] else "n/a" for p in PHASES]
            lines.append(f"| {_run_label(r)} | " + " | ".join(cells) + " |")
    return lines


def _run_label(row: dict) -> str:
    """A run's step label without its parenthesised details."""
    return STEP_LABELS[row["step"]].format(registry=row["registry"], sample=0,
                                           changed_resources=row.get("changed_resources") or 0).split(" (")[0]


def write_markdown(rows: list[dict], path: Path, header: dict) -> None:
    """Rewrite `path`: measurements and ratios, then whatever followed NOTES_MARKER in the old file."""
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1].strip("\n")
    all_ratios = ratios(rows)
    lines = [
        "# Benchmarks", "",
        "Produced by `python bench/run.py` (issue #9). Each step runs in its own process, one after the other: "
        "wall time is that process's, interpreter start-up included; peak RSS is that process's own "
        "(`os.wait4`), not the PostgreSQL server's.", "",
        f"- Machine: {header['machine']}.",
        f"- Date: {header['date']}. Code measured: {header['code']}.",
        f"- PostgreSQL: {header['postgres']}.",
        f"- 1-minute load average before each step: {_load_range(rows)} (on {os.cpu_count()} cores; other work on "
        "the machine slows the rows it overlaps). `CPU (s)` is the process's own user + system time (for "
        "PostgreSQL rows the server's work is not in it): it is what contention changes least.",
        "", "## Targets", "",
        "| target | measured | value | met |", "|---|---|---:|---|",
    ]
    for r in all_ratios:
        if r["target"]:
            label = TARGETS[r["key"]][0]
            size = (f"{r['patients'][0]:,} -> {r['patients'][1]:,}, {r['registry']}" if isinstance(r["patients"], tuple)
                    else f"{r['patients']:,} patients, {r['registry']}")
            digits = 3 if r["key"] in INCREMENTAL_KEYS else 2
            lines.append(f"| {label} | {size} | {_fmt(r['value'], digits)} | {_verdict(r)} |")
    if not any(r["key"] == "rss_growth" and r["target"] for r in all_ratios):
        skipped = any(r["step"] == "not run" and r["patients"] == 50000 for r in rows)
        lines.append(f"| {TARGETS['rss_growth'][0]} | "
                     f"{'50,000 not run (below)' if skipped else 'needs 1,000 and 50,000 in one run'} | n/a | "
                     "not measured |")
    for n in sorted({r["patients"] for r in rows}):
        size_rows = [r for r in rows if r["patients"] == n]
        if size_rows[0]["step"] == "not run":
            lines += ["", f"## {n:,} patients: not run", "", size_rows[0]["reason"][:1].upper()
                      + size_rows[0]["reason"][1:] + "."]
            continue
        resources = next((r["resources"] for r in size_rows if r["step"] == "synth"), 0)
        lines += ["", f"## {n:,} patients ({resources:,} resources)", "",
                  "| step | resources | wall (s) | resources/s | peak RSS (MiB) | CPU (s) | load before |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for step, registry in STEP_ORDER:
            r = next((r for r in size_rows if r["step"] == step and r["registry"] == registry), None)
            if r is None:
                continue
            label = STEP_LABELS[step].format(registry=registry, sample=r.get("sample") or 0,
                                             changed_resources=r.get("changed_resources") or 0)
            if r.get("error"):
                lines.append(f"| {label} | {r['resources']:,} | failed after {r['wall_s']:.1f} s: "
                             f"{r['error'].replace('|', '/')} | n/a | {r['peak_rss_mib']:.0f} | "
                             f"{r['cpu_s']:,.1f} | {r['load_before']:.1f} |")
                continue
            lines.append(f"| {label} | {r['resources']:,} | {r['wall_s']:,.1f} | {_fmt(r['resources_per_s'], 0)} | "
                         f"{r['peak_rss_mib']:,.0f} | {r['cpu_s']:,.1f} | {r['load_before']:.1f} |")
        lines += _phase_table(size_rows)
        synth = next(r for r in size_rows if r["step"] == "synth")
        lines += ["", "| ratio | value | target | |", "|---|---:|---|---|"]
        lines += [_ratio_line(r) for r in all_ratios if r["patients"] == n]
        lines += ["", f"Generating the cohort (`dlmreg synth`, not part of any row above) took {synth['wall_s']:.1f} s "
                      f"and {synth['peak_rss_mib']:.0f} MiB."]
    growth = [r for r in all_ratios if r["key"] == "rss_growth"]
    if growth:
        lines += ["", "## Memory growth", "", "| ratio | value | target | |", "|---|---:|---|---|"]
        lines += [_ratio_line(r) for r in growth]
    lines += ["", "## How each row is measured", "",
              "- **floor** (`bench/floor.py`): reads every NDJSON file of the cohort, `json.loads` each line and "
              "COPYs one row per resource (type, id, the line as `text`, like the staging column) into a plain, "
              "logged table with psycopg 3's `cursor.copy`, one commit. Nothing less can load this input.",
              "- **ETL** (`dlmreg run --source COHORT --registry URL --out OUT --no-progress`): the whole job: stage "
              "(parse, validate, de-identify), map, load, derive, quality checks, Data Docs, analysis and report, "
              "into a database created for the run, with its default worker processes (one per CPU) validating "
              "resources and reading report texts. Its CPU time includes the workers'; its peak RSS is the "
              "largest of the run's process and its workers (what `wait4` reports), not their sum.",
              "- **naive** (`bench/naive.py`): for each resource of a sample (the first lines of each file, in "
              "proportion to the file's share of all resources), a fhir.resources R4B `model_validate`, one "
              "SQLAlchemy ORM object, `session.add` and `session.commit`. The time of that loop per resource, "
              "times the cohort's resources, is the row's wall time (imports and sampling left out, so the "
              "naive figure is if anything flattering); its RSS is that of the sample run.",
              "- **incremental**: after the full run, the same cohort with 1% of the resources changed "
              "(`meta.versionId`/`lastUpdated` bumped and a narrative `text` added; seeded, so the same lines "
              "every time) is run into the same registry. The source is a file snapshot, so every file is read "
              "again; staging skips resources whose hash is unchanged.",
              "- **incremental, changes only**: then another 1% of the resources change (version 3, another seed) "
              "and only those resources are given, with `--delta`: what a scheduled `_lastUpdated` pull or a "
              "`_since` export delivers. Only the patients they belong to are re-mapped; the quality checks and "
              "the analysis run on the whole registry.",
              "- **incremental, 1% of the patients**: then every resource of about 1% of the patients (chosen by "
              "a seeded hash of the id) changes (version 4) and only those are given, with `--delta`: a nightly "
              "pull when the changes concentrate on the patients with new activity. A random 1% of the resources "
              "touches about half of the patients (a patient has about 68 resources); this touches 1%. Above "
              "`--no-random-changes-above` only this incremental run is measured, right after the full run.",
              "", NOTES_MARKER]
    if notes:
        lines += ["", notes]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark: floor, full ETL, naive baseline, incremental run.")
    parser.add_argument("--patients", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 patients, naive sample 500")
    parser.add_argument("--registries", nargs="+", choices=sorted(REGISTRIES), default=["postgresql", "sqlite"])
    parser.add_argument("--pg-url", help="SQLAlchemy URL of a PostgreSQL server (a database per run is created "
                        "on it); default: start a private cluster")
    parser.add_argument("--pg-port", type=int, help="port of the private cluster (default: a free one)")
    parser.add_argument("--naive-sample", type=int, default=2000, metavar="N")
    parser.add_argument("--ref", default="HEAD", help="git commit to measure (default HEAD)")
    parser.add_argument("--working-tree", action="store_true", help="measure the working tree instead of --ref")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--dlmreg", type=shlex.split, metavar="COMMAND",
                        help="command measured as `dlmreg` for the ETL rows (default: python -m etl.cli of the code "
                        "under test); the tests pass a stand-in to check the machinery quickly")
    parser.add_argument("--no-random-changes-above", type=int, metavar="N",
                        help="for sizes above N patients leave out the two incremental runs after a random 1%% of the "
                        "resources changed (each costs about half a full run)")
    parser.add_argument("--max-etl-minutes", type=float, default=25.0, metavar="M",
                        help="skip a size whose ETL run is projected (from the smaller sizes) to take longer, or to "
                        "need more than 90%% of the available memory (default 25)")
    args = parser.parse_args(argv)
    if args.quick:
        args.patients, args.naive_sample = [200], min(args.naive_sample, 500)
    work = Path(tempfile.mkdtemp(prefix="dlmreg-bench-"))
    cluster = None
    try:
        etl_env, code = code_under_test(work, None if args.working_tree else args.ref)
        if args.pg_url:
            server_url, pg_where = args.pg_url, "server given by `--pg-url`"
        else:
            cluster = PrivateCluster(args.pg_port).__enter__()
            server_url = cluster.url
            pg_where = "private cluster on 127.0.0.1, default settings (fsync on), same machine"
        version = server_version(server_url)
        header = {"machine": machine(version.split()[0]), "date": dt.date.today().isoformat(), "code": code,
                  "postgres": f"{version}, {pg_where}"}
        print(json.dumps({"machine": header["machine"], "code": code}), flush=True)
        rows: list[dict] = []
        for patients in sorted(args.patients):
            reason = skip_reason(rows, patients, args.max_etl_minutes)
            if reason:
                rows.append({"patients": patients, "step": "not run", "registry": None, "reason": reason})
                print(json.dumps(rows[-1]), flush=True)
            else:
                rows += bench_size(patients, args.registries, server_url, work, etl_env, args.naive_sample,
                                   args.dlmreg, no_random_changes=args.no_random_changes_above is not None
                                   and patients > args.no_random_changes_above)
            write_markdown(rows, args.output, header)  # after every size: a long run leaves partial results
        for r in ratios(rows):
            print(json.dumps({"ratio": r["key"], "patients": r["patients"], "registry": r["registry"],
                              "value": None if math.isnan(r["value"]) else r["value"], "target": r["target"],
                              "met": r["met"]}), flush=True)
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
