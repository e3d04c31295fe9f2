"""bench/run.py's machinery (issue #9): every measurement is taken and written to BENCHMARKS.md with finite
ratios and each target's verdict. No timing is asserted: targets and results live in BENCHMARKS.md.

The fast test measures a stand-in for `dlmreg run` (it creates a table in the registry it is given and
writes `results.json` as the real one does), so it checks the benchmark (databases per run, floor, naive
sample, the 1% change, measuring, the Markdown) in seconds; the real ETL at the same size runs in the
`slow` test (about 2.5 minutes, mostly the quality checks' fixed cost).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from pgcluster import pg_bin  # noqa: E402
from run import NOTES_MARKER, _owner, change_patients, change_share  # noqa: E402

STAND_IN = '''
import argparse, json
from pathlib import Path
import sqlalchemy as sa

parser = argparse.ArgumentParser()
parser.add_argument("command")
parser.add_argument("--source", type=Path)
parser.add_argument("--registry")
parser.add_argument("--out", type=Path)
parser.add_argument("--no-progress", action="store_true")
parser.add_argument("--delta", action="store_true")
args = parser.parse_args()
lines = [l for p in sorted(args.source.glob("*.ndjson")) for l in p.read_text().splitlines() if l.strip()]
changed = len(lines) if args.delta else sum('"versionId":"2"' in l for l in lines)
engine = sa.create_engine(args.registry)
with engine.begin() as conn:
    first = not sa.inspect(conn).has_table("stand_in")
    conn.execute(sa.text("CREATE TABLE IF NOT EXISTS stand_in (n integer)"))
    conn.execute(sa.text("INSERT INTO stand_in VALUES (:n)"), {"n": len(lines)})
args.out.mkdir(parents=True, exist_ok=True)
changes = {"new": len(lines) if first else 0, "changed": 0 if first else changed,
           "unchanged": 0 if first else len(lines) - changed, "deleted": 0}
seconds = {"stage": 0.25, "map_load_derive": 0.5, "audit": 0.75, "analysis_report": 0.125}
peaks = {"stage": 50.0, "map_load_derive": 60.0, "audit": 70.0, "analysis_report": 70.0}
(args.out / "results.json").write_text(json.dumps({"run": {"resources_read": len(lines), "staging_changes": changes,
                                                           "seconds": seconds, "peak_rss_mib": peaks}}))
'''


def _pg_args() -> list[str]:
    if os.environ.get("DLMREG_TEST_PG_URL"):
        return ["--pg-url", os.environ["DLMREG_TEST_PG_URL"]]
    if pg_bin() is None:
        pytest.skip("neither DLMREG_TEST_PG_URL nor PostgreSQL binaries (scripts/test.sh provides them)")
    return []


def _bench(tmp_path: Path, *extra: str) -> tuple[list[dict], str]:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text(f"# old\n\n{NOTES_MARKER}\n\nA note written by hand.\n")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--patients", "30", "--naive-sample", "60",
                           "--working-tree", "--output", str(output), *_pg_args(), *extra],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")], output.read_text()


def _check(lines: list[dict], markdown: str) -> None:
    rows = [r for r in lines if "step" in r]
    steps = {(r["step"], r["registry"]) for r in rows}
    assert steps == {("synth", None), ("floor", "PostgreSQL"), ("etl", "PostgreSQL"), ("etl", "SQLite"),
                     ("incremental", "PostgreSQL"), ("incremental", "SQLite"), ("naive", "PostgreSQL"),
                     ("incremental_delta", "PostgreSQL"), ("incremental_delta", "SQLite"),
                     ("incremental_patients", "PostgreSQL"), ("incremental_patients", "SQLite")}
    assert not [r for r in rows if r.get("error")]
    resources = next(r["resources"] for r in rows if r["step"] == "synth")
    delta = [r for r in rows if r["step"] in ("incremental_delta", "incremental_patients")]
    assert all(r["resources"] == resources for r in rows if r not in delta)   # every other step saw the whole cohort
    assert all(0 < r["resources"] == r["changed_resources"] < 0.05 * resources for r in delta)  # the changes alone
    assert all(r["peak_rss_mib"] > 0 and r["wall_s"] > 0 for r in rows)
    naive = next(r for r in rows if r["step"] == "naive")
    assert 50 <= naive["sample"] <= 70 and naive["extrapolated"]
    for r in rows:
        if r["step"] == "incremental":
            assert 0 < r["staging_changes"]["changed"] <= r["changed_resources"]   # non-cohort ones are excluded
    ratios = [r for r in lines if "ratio" in r]
    assert {r["ratio"] for r in ratios} == {"etl_over_floor", "naive_over_etl", "incremental_over_full",
                                            "delta_over_full", "patients_over_full"}
    assert all(math.isfinite(r["value"]) and r["met"] in (True, False) for r in ratios)

    for label in ["floor: read + json.loads + COPY into PostgreSQL", "ETL PostgreSQL (`dlmreg run`",
                  "ETL SQLite (`dlmreg run`", "naive, PostgreSQL (extrapolated from", "incremental PostgreSQL (",
                  "incremental SQLite (", "incremental PostgreSQL, changes only (`--delta`", "## 30 patients", "## Targets", "- Machine: ", "PostgreSQL 1",
                  "Code measured: working tree"]:
        assert label in markdown, label
    targets = markdown.split("## Targets")[1].split("\n## ")[0]
    verdicts = [line.rsplit("|", 2)[1].strip() for line in targets.splitlines() if line.startswith("| ")][1:]
    # at 30 patients: ETL/floor, naive/ETL (PostgreSQL), three incremental/full x 2 registries; RSS growth
    # needs 1,000 and 50,000
    assert len(verdicts) == 9 and verdicts.count("not measured") == 1
    assert all(v in ("**met**", "**not met**", "not measured") for v in verdicts)
    assert markdown.rstrip().endswith("A note written by hand.")          # hand-written notes survive
    # Where the time went: one row per ETL run, its phases from results.json and the rest of its wall time.
    phases = markdown.split("Where the time of each run went")[1].split("\n\n")[1].splitlines()[2:]
    assert [line.split(" | ")[0] for line in phases] == [
        "| ETL PostgreSQL", "| ETL SQLite", "| incremental PostgreSQL", "| incremental SQLite",
        "| incremental PostgreSQL, changes only", "| incremental SQLite, changes only",
        "| incremental PostgreSQL, 1% of the patients, changes only", "| incremental SQLite, 1% of the patients, changes only"]
    runs = [r for r in rows if r["step"] in ("etl", "incremental", "incremental_delta")]
    for line in phases:
        cells = [float(c.replace(",", "")) for c in line.strip("| ").split(" | ")[1:]]
        assert len(cells) == 5 and all(c >= 0 for c in cells[:4])
        assert any(abs(sum(cells) - r["wall_s"]) < 0.1 + 0.01 * r["wall_s"] for r in runs)
    # and each run's peak RSS at the end of each phase, as its results.json has it
    peaks = markdown.split("at the end of each phase")[1].split("\n\n")[1].splitlines()[2:]
    assert [line.split(" | ")[0] for line in peaks] == [line.split(" | ")[0] for line in phases]
    assert all(line.strip("| ").split(" | ")[1:] == ["50", "60", "70", "70"] for line in peaks)


def test_bench_machinery_writes_every_row(tmp_path):
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN)
    lines, markdown = _bench(tmp_path, "--dlmreg", f"{sys.executable} {stand_in}")
    _check(lines, markdown)


@pytest.mark.slow
def test_bench_real_etl(tmp_path):
    _check(*_bench(tmp_path))


def test_change_share_is_deterministic_and_about_one_percent(tmp_path, cohort_factory):
    cohort = cohort_factory(30, 1)
    first, second = change_share(cohort, tmp_path / "a"), change_share(cohort, tmp_path / "b")
    total = sum(1 for p in cohort.glob("*.ndjson") for line in p.read_text().splitlines() if line.strip())
    assert first == second and 0.005 * total < first < 0.02 * total
    for path in sorted(cohort.glob("*.ndjson")):
        assert (tmp_path / "a" / path.name).read_text() == (tmp_path / "b" / path.name).read_text()
    # on top of the first change, a second one whose changed resources alone are also written
    again = change_share(tmp_path / "a", tmp_path / "c", seed=10, version=3, delta=tmp_path / "d")
    delta = [line for p in sorted((tmp_path / "d").glob("*.ndjson")) for line in p.read_text().splitlines()]
    assert len(delta) == again and all('"versionId":"3"' in line for line in delta)
    assert set(delta) <= {line for p in (tmp_path / "c").glob("*.ndjson") for line in p.read_text().splitlines()}


def test_change_patients_changes_every_resource_of_the_chosen_patients_only(tmp_path, cohort_factory):
    cohort = cohort_factory(30, 1)
    count = change_patients(cohort, tmp_path / "a", share=0.1)
    assert change_patients(cohort, tmp_path / "b", share=0.1) == count
    delta = [json.loads(line) for p in sorted((tmp_path / "a").glob("*.ndjson")) for line in p.read_text().splitlines()]
    assert len(delta) == count and all(r["meta"]["versionId"] == "4" and "text" in r for r in delta)
    chosen = {r["id"] for r in delta if r["resourceType"] == "Patient"}
    assert len(chosen) == 3                                                  # 10% of 30 patients
    everything = [json.loads(line) for p in cohort.glob("*.ndjson") for line in p.read_text().splitlines() if line]
    assert sorted((r["resourceType"], r["id"]) for r in everything if _owner(r) in chosen) == \
        sorted((r["resourceType"], r["id"]) for r in delta)
    assert change_patients(cohort, tmp_path / "c") > 0                        # 1% of 30: still one patient
    assert len(list((tmp_path / "c" / "Patient.ndjson").read_text().splitlines())) == 1


def test_projection_skips_a_size_that_would_take_too_long():
    from run import projected, skip_reason

    rows = [{"patients": n, "step": "etl", "registry": "SQLite", "wall_s": w, "peak_rss_mib": m}
            for n, w, m in ((1000, 60.0, 600.0), (10000, 300.0, 4000.0))]
    wall, rss = projected(rows, 50000)
    assert math.isclose(wall, 300 + 240 / 9000 * 40000) and math.isclose(rss, 4000 + 3400 / 9000 * 40000)
    assert skip_reason(rows, 50000, max_etl_minutes=20).startswith("projected from the smaller sizes")
    assert skip_reason(rows[:1], 2000, max_etl_minutes=25) is None


def test_no_random_changes_above_leaves_out_the_random_change_runs(tmp_path):
    """`--no-random-changes-above`: a large size gets the floor, the full ETL runs, the naive sample and the change
    of 1% of the patients, not the two runs after a random 1% of the resources changed."""
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN)
    lines, markdown = _bench(tmp_path, "--dlmreg", f"{sys.executable} {stand_in}", "--no-random-changes-above", "10",
                             "--registries", "sqlite")
    steps = {(r["step"], r["registry"]) for r in lines if "step" in r}
    assert steps == {("synth", None), ("floor", "PostgreSQL"), ("etl", "SQLite"), ("naive", "PostgreSQL"),
                     ("incremental_patients", "SQLite")}
    assert "ETL SQLite (`dlmreg run`" in markdown and "incremental SQLite, 1% of the patients" in markdown
    assert "incremental SQLite (" not in markdown and "incremental SQLite, changes only" not in markdown
