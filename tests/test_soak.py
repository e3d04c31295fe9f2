"""Soak (issue 10, not in the fast suite): 30 consecutive incremental runs into one registry, each on a
snapshot with random changes, deletions and additions, end in the registry a fresh load of the final
snapshot gives (README "How a load works").

The snapshot starts as the first 24 patients of a 32-patient synthetic cohort (etl.synth: patient i does
not change when the cohort grows, so the other 8 are a pool to add from). Every iteration, drawn from one
seeded generator:
- 1-3% of the resources change: meta.versionId goes up, meta.lastUpdated moves on, and where the resource
  has one a field that matters changes: a lesion's size, a yes/no finding (viable tumour, found on
  intraoperative ultrasound, MRI sequences, a lesion visible on a study after its baseline), a surgery
  moved 1-3 days earlier, chemotherapy ending 1-7 days earlier, a birth date 1-30 days earlier;
- 0.5% of the resources are deleted: findings other than lesion visibility, reports and conditions other
  than the liver metastasis (patients, lesions, studies and treatments go only with their patient);
- with probability 0.3 a whole patient is deleted and with 0.4 one is added from the pool (a deleted
  patient can come back, with its FHIR ids and its original content);
- the order of the patients in the files is shuffled.
The changes keep the critical DLM rules true (a lesion stays seen on its baseline study, chemotherapy ends
before the post-chemotherapy CT, pathology and follow-up stay after the surgery), so every run must
publish: each run's accounting is checked, then the final registry is compared, row by row with ids
translated to FHIR identities (tests/registry_compare.py), with a fresh load of the final snapshot.

Run: `scripts/test.sh -m slow tests/test_soak.py` (SQLite, and PostgreSQL when scripts/test.sh starts one).
"""
from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import pytest

from etl.pipeline import RunFailed, RunSettings, run
from tests.registry_compare import assert_same_registry

RUNS = 30
POOL, START, SEED = 32, 24, 29
FILES = ("Patient", "Condition", "BodyStructure", "DiagnosticReport", "Observation", "Procedure",
         "MedicationAdministration", "DocumentReference")
LIVER_METASTASIS = "94381002"
CHEMOTHERAPY = "367336001"
FLIPPABLE = {"viable-tumor", "found-on-ious", "mri-dwi", "mri-hepatobiliary-phase"}
SIZE = "21889-1"


def _patient_of(resource: dict) -> str:
    if resource["resourceType"] == "Patient":
        return resource["id"]
    reference = (resource.get("subject") or resource.get("patient"))["reference"]
    return reference.rsplit("/", 1)[-1]


def _code(resource: dict) -> str | None:
    coding = ((resource.get("code") or {}).get("coding") or [{}])[0]
    return coding.get("code")


def _day(text: str, days: int) -> str:
    """Move the date of a FHIR date or dateTime by `days`, keeping the rest of the text."""
    return (dt.date.fromisoformat(text[:10]) + dt.timedelta(days=days)).isoformat() + text[10:]


class Snapshot:
    """The source as resources per patient, in file order; written as one NDJSON file per type."""

    def __init__(self, pool_dir: Path):
        self.pool: dict[str, list[dict]] = {}
        for name in FILES:
            for line in (pool_dir / f"{name}.ndjson").read_text(encoding="utf-8").splitlines():
                resource = json.loads(line)
                self.pool.setdefault(_patient_of(resource), []).append(resource)
        self.order = list(self.pool)                          # Patient.ndjson order = cohort order
        self.current = {pid: [dict(r) for r in self.pool[pid]] for pid in self.order[:START]}

    def resources(self) -> list[dict]:
        return [r for pid in self.current for r in self.current[pid]]

    def write(self, directory: Path) -> int:
        directory.mkdir(parents=True, exist_ok=True)
        lines = {name: [] for name in FILES}
        for resource in self.resources():
            lines[resource["resourceType"]].append(json.dumps(resource, ensure_ascii=False, separators=(",", ":")))
        for name, found in lines.items():
            (directory / f"{name}.ndjson").write_text("".join(f"{line}\n" for line in found), encoding="utf-8")
        return sum(map(len, lines.values()))


def _baselines(resources: list[dict]) -> set[str]:
    """Ids of the lesion-visible findings dated on or before the patient's first chemotherapy (the baseline
    studies, rule G1): they are never flipped or deleted, so every lesion stays seen at baseline (DLM7)."""
    chemo_start: dict[str, str] = {}
    for r in resources:
        period = r.get("performedPeriod") if _code(r) == CHEMOTHERAPY else r.get("effectivePeriod")
        if r["resourceType"] in ("Procedure", "MedicationAdministration") and period and period.get("start"):
            pid = _patient_of(r)
            chemo_start[pid] = min(chemo_start.get(pid, period["start"]), period["start"])
    return {r["id"] for r in resources if r["resourceType"] == "Observation" and _code(r) == "lesion-visible"
            and r.get("effectiveDateTime", "")[:10] <= chemo_start.get(_patient_of(r), "9999")[:10]}


def change(resource: dict, rng: random.Random, baselines: set[str], version_time: str) -> str:
    """Bump the version and change a field that matters (where the resource has one); returns what changed."""
    meta = resource.get("meta") or {}
    resource["meta"] = {**meta, "versionId": str(int(meta.get("versionId", "1")) + 1), "lastUpdated": version_time}
    kind, code = resource["resourceType"], _code(resource)
    if kind == "Observation" and code == SIZE and "valueQuantity" in resource:
        value = resource["valueQuantity"]["value"]
        resource["valueQuantity"] = {**resource["valueQuantity"], "value": max(1, value + rng.choice([-3, -1, 1, 2, 5]))}
        return "lesion size"
    if kind == "Observation" and isinstance(resource.get("valueBoolean"), bool) and (
            code in FLIPPABLE or (code == "lesion-visible" and resource["id"] not in baselines)):
        resource["valueBoolean"] = not resource["valueBoolean"]
        return f"{code} flipped"
    if kind == "Procedure" and "performedDateTime" in resource:
        resource["performedDateTime"] = _day(resource["performedDateTime"], -rng.randint(1, 3))
        return "surgery earlier"
    period_key = "performedPeriod" if kind == "Procedure" else "effectivePeriod"
    period = resource.get(period_key)
    if kind in ("Procedure", "MedicationAdministration") and period and period.get("end") and period.get("start"):
        length = (dt.date.fromisoformat(period["end"][:10]) - dt.date.fromisoformat(period["start"][:10])).days
        if length > 1:
            resource[period_key] = {**period, "end": _day(period["end"], -rng.randint(1, min(7, length - 1)))}
            return "chemotherapy ends earlier"
    if kind == "Patient" and resource.get("birthDate"):
        resource["birthDate"] = _day(resource["birthDate"], -rng.randint(1, 30))
        return "birth date"
    return "version only"


def deletable(resource: dict) -> bool:
    """Findings other than lesion visibility, reports and other conditions go; patients, lesions, studies,
    treatments and cohort conditions stay (the critical DLM rules rest on them)."""
    kind = resource["resourceType"]
    return ((kind == "Observation" and _code(resource) != "lesion-visible") or kind == "DocumentReference"
            or (kind == "Condition" and _code(resource) != LIVER_METASTASIS))


def evolve(snapshot: Snapshot, rng: random.Random, iteration: int) -> dict:
    """One iteration's random changes, deletions and additions (in place); returns their counts."""
    counts = {"changed": 0, "deleted": 0, "patients_added": 0, "patients_deleted": 0, "what": {}}
    version_time = (dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=iteration)).isoformat()
    if rng.random() < 0.3 and len(snapshot.current) > START // 2:
        del snapshot.current[rng.choice(sorted(snapshot.current))]
        counts["patients_deleted"] += 1
    absent = [pid for pid in snapshot.order if pid not in snapshot.current]
    if rng.random() < 0.4 and absent:
        pid = rng.choice(absent)
        snapshot.current[pid] = [dict(r) for r in snapshot.pool[pid]]
        counts["patients_added"] += 1
    resources = snapshot.resources()
    baselines = _baselines(resources)
    for resource in rng.sample(resources, round(len(resources) * rng.uniform(0.01, 0.03))):
        what = change(resource, rng, baselines, version_time)
        counts["changed"] += 1
        counts["what"][what] = counts["what"].get(what, 0) + 1
    doomed = {id(r) for r in rng.sample([r for r in resources if deletable(r)], round(len(resources) * 0.005))}
    for pid in snapshot.current:
        kept = [r for r in snapshot.current[pid] if id(r) not in doomed]
        counts["deleted"] += len(snapshot.current[pid]) - len(kept)
        snapshot.current[pid] = kept
    # A shuffled patient order: registries must not depend on the order of the input.
    snapshot.current = dict(rng.sample(sorted(snapshot.current.items()), len(snapshot.current)))
    return counts


def _load(source: Path, url: str, out: Path) -> dict:
    return run(RunSettings(source=str(source), registry_url=url, out_dir=out, show_progress=False))


@pytest.mark.slow
def test_thirty_incremental_runs_equal_a_fresh_load(cohort_factory, tmp_path, registry_factory):
    rng = random.Random(SEED)
    snapshot = Snapshot(cohort_factory(POOL, SEED))
    source, incremental = tmp_path / "source", registry_factory()
    lines = snapshot.write(source)
    first = _load(source, incremental, tmp_path / "out_0")
    assert first["run"]["status"] == "published" and first["run"]["resources_read"] == lines
    totals = {"changed": 0, "deleted": 0, "patients_added": 0, "patients_deleted": 0}
    for iteration in range(1, RUNS + 1):
        counts = evolve(snapshot, rng, iteration)
        lines = snapshot.write(source)
        try:
            results = _load(source, incremental, tmp_path / f"out_{iteration}")
        except RunFailed as exc:
            pytest.fail(f"run {iteration} of {RUNS} failed: {exc}; its changes: {counts}")
        r = results["run"]
        assert r["resources_read"] == lines == r["loaded"] + r["quarantined"] + r["excluded"]
        assert r["quarantined"] == 0
        changes = r["staging_changes"]
        assert changes["changed"] + changes["new"] + changes["deleted"] > 0, (iteration, counts)
        for key in totals:
            totals[key] += counts[key]
    fresh = registry_factory()
    final = _load(source, fresh, tmp_path / "out_fresh")
    assert_same_registry(incremental, fresh)
    assert results["npv"] == final["npv"]
    assert results["lesion_flow"] == final["lesion_flow"]
    print(f"soak: {RUNS} incremental runs after the first load, {totals}, final snapshot {lines} resources, "
          f"{len(snapshot.current)} patients: registry equals a fresh load")
