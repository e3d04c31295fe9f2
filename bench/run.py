"""Benchmark: `dlmreg synth` + `dlmreg run` at several cohort sizes, each step in its own process so
peak RSS is that step's own. Writes the table to BENCHMARKS.md with the machine description.

    python bench/run.py                       # 1,000 and 10,000 patients, SQLite registry
    python bench/run.py --patients 1000 --registry postgresql+psycopg://user@127.0.0.1:5432/bench

No timing assertions live in the tests; targets and results are recorded here.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _measure(command: list[str]) -> tuple[float, float]:
    """Run `command`; returns (wall seconds, peak RSS in MiB of that process)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read()
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return (f"{os.cpu_count()} cores ({cpu}), {memory / 1024 / 1024:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def bench(patients: int, registry: str | None, work: Path) -> dict:
    cohort, out = work / f"cohort_{patients}", work / f"out_{patients}"
    dlmreg = [sys.executable, "-m", "etl.cli"]
    synth_s, synth_mb = _measure(dlmreg + ["synth", "--patients", str(patients), "--seed", "1", "--out", str(cohort)])
    run_cmd = dlmreg + ["run", "--source", str(cohort), "--out", str(out), "--no-progress"]
    if registry:
        run_cmd += ["--registry", registry]
    run_s, run_mb = _measure(run_cmd)
    results = json.loads((out / "results.json").read_text())
    read = results["run"]["resources_read"]
    return {"patients": patients, "resources": read, "synth_s": synth_s, "synth_rss_mb": synth_mb,
            "run_s": run_s, "run_rss_mb": run_mb, "run_resources_per_s": read / run_s,
            "registry": "PostgreSQL" if registry else "SQLite"}


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = [
        "# Benchmarks", "",
        "Produced by `python bench/run.py` (each step in its own process; peak RSS is that process's).",
        f"Machine: {_machine()}. Date: {dt.date.today().isoformat()}.", "",
        "| patients | resources | registry | synth (s) | synth peak RSS (MiB) | run (s) | run resources/s | run peak RSS (MiB) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['patients']:,} | {r['resources']:,} | {r['registry']} | {r['synth_s']:.1f} | "
              f"{r['synth_rss_mb']:.0f} | {r['run_s']:.1f} | {r['run_resources_per_s']:,.0f} | {r['run_rss_mb']:.0f} |"
              for r in rows]
    lines += ["", "`run` is the whole job: stage (parse, validate, de-identify), map, load, derive, quality "
              "checks, analysis and report.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--registry", help="SQLAlchemy URL of an empty database (default: SQLite in the work dir)")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dlmreg-bench-"))
    try:
        rows = []
        for patients in args.patients:
            row = bench(patients, args.registry, work)
            print(json.dumps(row), flush=True)
            rows.append(row)
        write_markdown(rows, args.output)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
