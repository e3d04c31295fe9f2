"""Acceptance (registry loads): loading the same input twice, or the input with 1% of resources
changed and 1% deleted, gives the same registry as a fresh load of the final input."""
from __future__ import annotations

import datetime as dt
import json
import random
import shutil

import pytest
import sqlalchemy as sa

from etl.pipeline import RunSettings, load_and_audit, run
from etl.registry import open_registry
from tests.registry_compare import assert_same_registry


def change_and_delete(source, target, seed: int, share: float = 0.01) -> dict:
    """Copy a cohort, changing `share` of the resources (new version, flipped values) and deleting `share`.

    Deletions spare lesion-visible findings: losing a baseline study would (rightly) fail the critical
    quality check DLM7, and these tests are about loads, not about the audit.
    """
    rng = random.Random(seed)
    target.mkdir()
    counts = {"changed": 0, "deleted": 0}
    for path in sorted(source.glob("*.ndjson")):
        kept = []
        for line in path.read_text().splitlines():
            draw = rng.random()
            if draw < share and path.name != "Patient.ndjson" and '"lesion-visible"' not in line:
                counts["deleted"] += 1
                continue
            if draw < 2 * share:
                resource = json.loads(line)
                resource["meta"] = {"versionId": "2", "lastUpdated": "2026-01-01T00:00:00Z"}
                if isinstance(resource.get("valueBoolean"), bool):
                    resource["valueBoolean"] = not resource["valueBoolean"]
                line = json.dumps(resource)
                counts["changed"] += 1
            kept.append(line)
        (target / path.name).write_text("\n".join(kept) + "\n")
    shutil.copy(source / "truth.json", target / "truth.json")
    return counts


def _load(source, url, out):
    return run(RunSettings(source=str(source), registry_url=url, out_dir=out, show_progress=False))


def test_changed_and_deleted_input_equals_fresh_load(cohort_factory, tmp_path, registry_factory):
    original = cohort_factory(40, 9)
    final = tmp_path / "final"
    counts = change_and_delete(original, final, seed=1)
    assert counts["changed"] > 10 and counts["deleted"] > 10
    incremental, fresh = registry_factory(), registry_factory()
    _load(original, incremental, tmp_path / "o1")
    second = _load(final, incremental, tmp_path / "o2")
    changes = second["run"]["staging_changes"]
    assert changes["deleted"] >= counts["deleted"] and changes["changed"] > 0 and changes["new"] == 0
    fresh_results = _load(final, fresh, tmp_path / "o3")
    assert_same_registry(incremental, fresh)
    assert second["npv"] == fresh_results["npv"]
    # each row's lineage names the FHIR version it was mapped from: the changed resources' new one (the
    # lineage of deleted resources stays, so that their ids come back with them)
    versions, fresh_versions = _lineage_versions(incremental), _lineage_versions(fresh)
    assert {key: versions.get(key) for key in fresh_versions} == fresh_versions
    assert sum(v == "2" for v in fresh_versions.values()) > 10


def _lineage_versions(url: str) -> dict:
    registry = open_registry(url)
    lineage = registry.tables["dlm_lineage"]
    with registry.engine.connect() as conn:
        versions = {(t, k): v for t, k, v in conn.execute(sa.select(
            lineage.c.omop_table, lineage.c.source_key, lineage.c.fhir_version_id))}
    registry.engine.dispose()
    return versions


def test_failed_load_leaves_previous_state(cohort_factory, tmp_path, monkeypatch):
    """A failure inside the load transaction rolls back: the registry is what it was before."""
    import etl.pipeline
    from tests.registry_compare import canonical_registry

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    _load(cohort_factory(20, 2), url, tmp_path / "o1")
    before = canonical_registry(url)

    def broken_derive(*args, **kwargs):
        raise RuntimeError("simulated failure after the rows were written")

    monkeypatch.setattr(etl.pipeline, "derive", broken_derive)
    changed = tmp_path / "changed"
    change_and_delete(cohort_factory(20, 2), changed, seed=3, share=0.05)
    try:
        _load(changed, url, tmp_path / "o2")
    except RuntimeError:
        pass
    else:
        raise AssertionError("the simulated failure did not surface")
    after = canonical_registry(url)
    assert {k: v for k, v in after.items() if k != "fhir_resource"} == \
        {k: v for k, v in before.items() if k != "fhir_resource"}


class _ChangesOnly:
    """An incremental source: a directory holding only changed resources, plus reported deletions."""

    is_snapshot = False

    def __init__(self, directory, deleted):
        from etl.extract import FileSource

        self._files = FileSource(directory)
        self.deleted = deleted

    def describe(self) -> str:
        return "test:changes-only"

    def records(self, types=None, exclude=None):
        return self._files.records(types, exclude)


def _changes_only(original, tmp_path) -> tuple:
    """The final data of `original` with 1% changed and 1% deleted, as an incremental source sees it: a
    directory of the changed resources only, and the deletions. Returns (final, changes, deleted, changed)."""
    final = tmp_path / "final"
    change_and_delete(original, final, seed=4, share=0.01)
    before = {json.loads(line)["id"]: line for p in original.glob("*.ndjson") for line in p.read_text().splitlines()}
    after = {}
    for path in final.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            after[json.loads(line)["id"]] = (path.name, line)
    changes = tmp_path / "changes"
    changes.mkdir()
    changed_lines: dict[str, list[str]] = {}
    for rid, (name, line) in after.items():
        if before.get(rid) != line:
            changed_lines.setdefault(name, []).append(line)
    for name, lines in changed_lines.items():
        (changes / name).write_text("\n".join(lines) + "\n")
    deleted = [(json.loads(line)["resourceType"], rid) for rid, line in before.items() if rid not in after]
    assert deleted and changed_lines
    return final, changes, deleted, sum(map(len, changed_lines.values()))


def _stage(url: str, source, run_id: str):
    from etl.registry import open_registry
    from etl.stage import stage_source
    from etl.stage.pseudonym import Pseudonymizer
    from etl.transform import SUPPORTED_TYPES
    from etl.vocabulary import load_code_map

    registry = open_registry(url)
    return stage_source(registry.engine, registry.tables, source, load_code_map(), Pseudonymizer(), run_id,
                        SUPPORTED_TYPES, show_progress=False)


def test_incremental_source_with_deletions_equals_fresh_load(cohort_factory, tmp_path, registry_factory):
    """Only the changed resources arrive (no patients, no cohort conditions among them) plus a deletion
    list: staging merges them with what it holds, and the registry equals a fresh load of the final data."""
    from etl.registry import open_registry
    from etl.vocabulary import load_code_map

    original = cohort_factory(40, 9)
    final, changes, deleted, changed = _changes_only(original, tmp_path)
    incremental, fresh = registry_factory(), registry_factory()
    _load(original, incremental, tmp_path / "o1")
    accounting = _stage(incremental, _ChangesOnly(changes, deleted), "incremental-run")
    assert accounting.changes["deleted"] == len(deleted)
    assert accounting.changes["new"] == 0 and accounting.changes["changed"] == changed
    assert sum(accounting.quarantined.values()) == 0
    load_and_audit(open_registry(incremental), load_code_map(), "incremental-run", "test", 24.0, dt.date.today(),
                   show_progress=False)
    _load(final, fresh, tmp_path / "o3")
    assert_same_registry(incremental, fresh)


def _staged(url: str) -> list[tuple]:
    """Every staged row, but when it was fetched."""
    from etl.registry import open_registry

    registry = open_registry(url)
    staging = registry.tables["fhir_resource"]
    with registry.engine.connect() as conn:
        rows = sorted(conn.execute(sa.select(*[c for c in staging.c if c.name != "fetched_at"])).all())
    registry.engine.dispose()
    return rows


@pytest.mark.parametrize("setting", [{"LOOKUP_BLOCK": 3}, {"LOOKUP_BLOCK_CHARS": 1}, {"LAZY_LOOKUPS": 3}],
                         ids=["blocks-of-3", "blocks-of-one-by-size", "switch-to-reading-all"])
def test_every_lookup_strategy_stages_what_the_default_stages(cohort_factory, tmp_path, registry_factory,
                                                             monkeypatch, setting):
    """Staging asked for the keys a block of resources brings in blocks of 3 resources, or of one resource
    by their characters, or (a low `LAZY_LOOKUPS`) read whole after the first few keys: the same changes
    counted and the same rows staged as with the default blocks, whose registry the test above checks
    (the registry is mapped from the staged rows)."""
    import etl.stage
    from etl.extract import FileSource

    original = cohort_factory(40, 9)
    _, changes, deleted, changed = _changes_only(original, tmp_path)
    default, other = registry_factory(), registry_factory()
    for url in (default, other):
        _stage(url, FileSource(original), "base-run")
    expected = _stage(default, _ChangesOnly(changes, deleted), "incremental-run")
    for name, value in setting.items():
        monkeypatch.setattr(etl.stage, name, value)
    got = _stage(other, _ChangesOnly(changes, deleted), "incremental-run")
    assert got.changes == expected.changes and got.changes["changed"] == changed
    assert got.changes["deleted"] == len(deleted) and sum(got.quarantined.values()) == 0
    assert _staged(other) == _staged(default) and len(_staged(default)) > 1000


def test_delta_files_from_the_cli_equal_a_fresh_load_and_remove_nothing(cohort_factory, tmp_path, registry_factory):
    """`dlmreg run --delta DIR`: a directory of changed resources only (a saved `_since` export) updates
    the registry to what a fresh load of the whole final data gives; without --delta the same directory
    would be a snapshot and remove everyone else."""
    from etl.cli import main

    original = cohort_factory(30, 12)
    final = tmp_path / "final"
    change_and_delete(original, final, seed=5, share=0.02)
    # keep the changes, undo the deletions: a delta export does not list deletions as files
    kept = {json.loads(line)["id"] for p in final.glob("*.ndjson") for line in p.read_text().splitlines()}
    changes, whole = tmp_path / "changes", tmp_path / "whole"
    changes.mkdir()
    whole.mkdir()
    changed = 0
    for path in sorted(original.glob("*.ndjson")):
        new = {json.loads(line)["id"]: line for line in (final / path.name).read_text().splitlines()}
        lines = path.read_text().splitlines()
        delta = [new[json.loads(line)["id"]] for line in lines if json.loads(line)["id"] in new
                 and new[json.loads(line)["id"]] != line]
        changed += len(delta)
        (changes / path.name).write_text("".join(line + "\n" for line in delta))
        (whole / path.name).write_text("".join(new.get(json.loads(line)["id"], line) + "\n" for line in lines))
    assert changed > 10 and len(kept) < sum(len(p.read_text().splitlines()) for p in original.glob("*.ndjson"))

    incremental, fresh = registry_factory(), registry_factory()
    assert main(["run", "--source", str(original), "--registry", incremental, "--out", str(tmp_path / "o1"),
                 "--no-progress"]) == 0
    assert main(["run", "--source", str(changes), "--delta", "--registry", incremental,
                 "--out", str(tmp_path / "o2"), "--no-progress"]) == 0
    second = json.loads((tmp_path / "o2" / "results.json").read_text())["run"]
    assert second["resources_read"] == changed and second["staging_changes"]["deleted"] == 0
    assert second["extract"]["incremental"] is True
    _load(whole, fresh, tmp_path / "o3")
    assert_same_registry(incremental, fresh)
