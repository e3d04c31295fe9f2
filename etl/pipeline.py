"""The stages of one registry run, as plain functions: the CLI runs them in-process and the Airflow
DAG runs each as a task. extract+stage -> map+load+derive+audit (one transaction, committed only
when no critical check fails) -> analyse/publish.

Only counts and paths leave a stage, never patient rows, so stage results are safe to log or pass
through XCom.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import resource
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from etl.dashboard import write_dashboard
from etl.extract import ServerOptions, open_source
from etl.frames import read_frame
from etl.incremental_checks import IncrementalChecks, checks_salt, clear_state, write_state
from etl.lesions.derive import derive
from etl.load import (backfill_lineage_patients, claimed_elsewhere, delete_all_patients, delete_persons, insert_rows,
                      move_lineage, replace_global_rows, table_counts, write_lineage)
from etl.nlp.reader import ReportReader
from etl.progress import Progress
from etl.registry import Registry, open_registry
from etl.run_lock import registry_lock
from etl.stage import load_extract_state, stage_source
from etl.stage.pseudonym import Pseudonymizer
from etl.transform import SUPPORTED_TYPES, map_batch, reader_jobs
from etl.transform.context import IdAssigner
from etl.transform.patients import (KeyRange, delete_digests, mapping_salt, registry_notes, staged_digests,
                                    stored_digests, write_digests)
from etl.transform.vocabulary_tables import cdm_source_row, concept_rows, source_to_concept_rows
from etl.vocabulary import CodeMap, load_code_map
from registry_schema.constraints import analyze, apply_constraints, create_indexes, indexes_deferred

log = logging.getLogger(__name__)
DEMO_PATIENTS, DEMO_SEED = 200, 1527
DEMO_LABEL = "demo cohort (synthetic)"
MAP_BATCH_PATIENTS = 500  # patients mapped, loaded and derived together (memory is bounded by one batch)
# A load that maps or removes more than this share of the staged patients refreshes the planner statistics
# (PostgreSQL's default autovacuum_analyze_scale_factor; autovacuum cannot see the load's open transaction).
ANALYZE_SHARE = 0.1
LINEAGE_ANALYZE_ROWS = 100_000
UNMAPPED_COLUMNS = ["source_system", "source_code", "field", "reason", "occurrences"]


DATA_DOCS = "data_docs"  # great-expectations Data Docs of the run's checks, under OUT


def data_docs_for_run(out_dir: str | Path | None) -> Path | None:
    """Where a run builds its Data Docs: OUT/data_docs, or nowhere without an OUT or with
    `DLMREG_DATA_DOCS=off` (building them takes seconds per run; many runs need no HTML copy of the
    results stored in dlm_quality_result). When off, an earlier run's docs are removed, so that the
    dashboard never links to another run's."""
    if out_dir is None:
        return None
    directory = Path(out_dir) / DATA_DOCS
    if os.environ.get("DLMREG_DATA_DOCS", "on").lower() == "off":
        shutil.rmtree(directory, ignore_errors=True)
        return None
    return directory


class RunFailed(Exception):
    """A run that ended without publishing; the message is the one-line reason for the user.

    `audit` holds the audit's `quality` and `lesion_flow` (counts only) when the checks ran, so an
    orchestrator can still report them.
    """

    def __init__(self, message: str, audit: dict | None = None):
        super().__init__(message)
        self.audit = audit


@dataclass
class RunSettings:
    source: str | None = None                 # directory/file; None = the demo cohort
    registry_url: str | None = None           # None = SQLite file in out_dir
    out_dir: Path = Path("out")
    followup_window_months: float = 24.0
    mapping_dirs: tuple[Path, ...] = ()
    at_risk_times: list[float] | None = None
    show_progress: bool | None = None
    server: ServerOptions = field(default_factory=ServerOptions)
    today: dt.date = field(default_factory=dt.date.today)
    remap_all: bool = False                   # re-map every patient, not only those whose staged data changed
    map_batch_patients: int = MAP_BATCH_PATIENTS
    workers: int | None = None                # validating and report-reading processes; None: DLMREG_WORKERS or CPUs

    def resolved_registry_url(self) -> str:
        return self.registry_url or f"sqlite:///{(self.out_dir / 'dlm_registry.sqlite').resolve()}"


@contextmanager
def demo_source():
    """The bundled demo cohort: generated deterministically by the synthetic generator."""
    from etl.synth import write_cohort

    with tempfile.TemporaryDirectory(prefix="dlmreg-demo-") as directory:
        write_cohort(Path(directory), patients=DEMO_PATIENTS, seed=DEMO_SEED)
        yield directory


def stage(registry: Registry, source: str, codes: CodeMap, run_id: str, show_progress=None,
          server: ServerOptions = ServerOptions(), workers: int | None = None) -> dict:
    """Extract + stage (validating in `workers` processes). Returns the accounting (counts only), with what
    the source reported."""
    opened = open_source(source, tuple(sorted(SUPPORTED_TYPES)), server,
                         lambda key: load_extract_state(registry.engine, registry.tables, key))
    try:
        accounting = stage_source(registry.engine, registry.tables, opened, codes, Pseudonymizer(),
                                  run_id, SUPPORTED_TYPES, show_progress, workers=workers)
    finally:
        if hasattr(opened, "close"):
            opened.close()
    result = accounting.as_dict()
    result["extract"] = {"source": opened.describe(), "incremental": not getattr(opened, "is_snapshot", True),
                         "incomplete": sorted(getattr(opened, "incomplete", None) or []),
                         "duplicates": getattr(opened, "duplicates", 0),
                         # Bulk `error` files and OperationOutcome entries of REST search pages.
                         "server_messages": [*getattr(opened, "errors", []), *getattr(opened, "warnings", [])][:20]}
    return result


def load_patients(conn: sa.Connection, tables: dict[str, sa.Table], codes: CodeMap, run_id: str,
                  window_months: float, today: dt.date, *, keys: KeyRange = KeyRange(), part: int = 0, parts: int = 1,
                  remap_all: bool = False, batch_size: int = MAP_BATCH_PATIENTS, show_progress=None,
                  workers: int | None = None, before_replace: Callable[[list[int]], None] | None = None) -> dict:
    """Map, load and derive, in batches of `batch_size` patients, the patients of `keys` whose digest changed
    (etl.transform.patients), and delete the rows of patients no longer staged. An incremental load calls
    `before_replace` with the person ids whose rows it is about to delete or replace. Runs in the caller's
    transaction; memory is bounded by the batch, not by the registry. While one batch is mapped, `workers`
    processes read the report texts of the next (etl.nlp.reader; default `DLMREG_WORKERS`, else one per CPU).

    The whole registry (default `keys`) is re-mapped from scratch when `remap_all` is set or no patient was
    mapped before (a new registry, or one loaded before digests existed). A partition (`keys` a range, ids
    `part` modulo `parts`) only ever touches its own patients, so partitions can load concurrently.
    A bulk load of the whole registry (full, or more than ANALYZE_SHARE of the patients) analyzes staging and
    the lineage first, and the lineage again each time it has doubled (registry_schema.constraints.analyze);
    a first load (empty lineage) builds the lineage's key indexes once, after its last batch.
    Preconditions: staging is loaded; the registry tables exist.

    Returns counts: `mode` (full or incremental), staged `patients`, patients `mapped` and `removed`,
    `resources` read, report texts read by worker processes (`texts_read_in_workers`), and whether it was such
    a bulk load (`statistics_refreshed`: the audit then analyzes every table).
    """
    backfill_lineage_patients(conn, tables)
    salt = mapping_salt(codes, window_months)
    staged = staged_digests(conn, tables, salt, keys)
    stored = stored_digests(conn, tables, keys)
    lineage = tables["dlm_lineage"]
    check_moves = conn.execute(sa.select(lineage.c.omop_id).limit(1)).first() is not None
    if keys == KeyRange() and (remap_all or not stored):
        mode, todo, removed = "full", sorted(staged), sorted(stored)
        delete_all_patients(conn, tables)
        conn.execute(tables["dlm_patient_digest"].delete())
    else:
        mode = "incremental"
        todo = sorted(k for k, digest in staged.items() if remap_all or k not in stored or stored[k].digest != digest)
        removed = sorted(set(stored) - set(staged))
        replaced = [stored[k].person_id for k in (*todo, *removed) if k in stored and stored[k].person_id is not None]
        if before_replace is not None:
            before_replace(replaced)
        # every changed patient's rows go before any batch is written: a resource that moved between two
        # changed patients keeps its id, so its old row must be gone first
        delete_persons(conn, tables, replaced)
        delete_digests(conn, tables, removed)
    log.info("map: %s, %d of %d patients to map, %d removed", mode, len(todo), len(staged), len(removed))
    # Not in a partition: ANALYZE locks the table against another ANALYZE until the transaction ends, which would
    # make concurrent partitions wait for each other (audit_partitions analyzes once they have committed).
    refresh = keys == KeyRange() and (mode == "full" or len(todo) + len(removed) > ANALYZE_SHARE * len(staged))
    if refresh:
        # Staging is complete (the stage committed it); the lineage is read by patient for every batch.
        analyze(conn, [tables["fhir_resource"], lineage])
    lineage_rows = analyzed_rows = 0   # new lineage rows written so far, and when the lineage was last analyzed
    ids = IdAssigner(conn, lineage, offset=part, stride=parts)
    progress = Progress("mapped resources", show_progress)
    resources = 0
    chunks = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    # A first load of the whole registry fills an empty lineage: its key indexes are built once at the end
    # (nothing looks a key up meanwhile: there are no earlier ids, moves or versions to find).
    first_load = keys == KeyRange() and not check_moves
    with ReportReader(workers) as reader, (indexes_deferred(conn, lineage, keep=("patient_key",)) if first_load
                                           else nullcontext()):
        def read_ahead(number: int) -> int | None:
            if not reader.parallel or number >= len(chunks):
                return None
            return reader.read_ahead(reader_jobs(conn, tables, codes, chunks[number]))

        ahead = read_ahead(0)
        for number, chunk in enumerate(chunks):
            following = read_ahead(number + 1)
            resources += _map_load_derive(conn, tables, codes, ids, chunk, staged, run_id, window_months, today,
                                          check_moves, progress, reader)
            lineage_rows += len(ids.new)
            if refresh and lineage_rows >= max(LINEAGE_ANALYZE_ROWS, 2 * analyzed_rows):
                # A lineage that grows from empty (a first load) is analyzed each time it has doubled: planned as
                # empty, the lookup by patient reads the whole lineage, once per batch.
                analyze(conn, [lineage])
                analyzed_rows = lineage_rows
            reader.release(ahead)
            ahead = following
    progress.done()
    return {"mode": mode, "patients": len(staged), "mapped": len(todo), "removed": len(removed),
            "resources": resources, "texts_read_in_workers": reader.read_in_workers, "statistics_refreshed": refresh}


def _map_load_derive(conn: sa.Connection, tables: dict[str, sa.Table], codes: CodeMap, ids: IdAssigner,
                     chunk: list[str], staged: dict, run_id: str, window_months: float, today: dt.date,
                     check_moves: bool, progress: Progress, reader: ReportReader) -> int:
    """One batch of load_patients; returns the resources it read."""
    batch = map_batch(conn, tables, codes, ids, chunk, today, progress, reader)
    moved = claimed_elsewhere(conn, tables, batch.lineage) if check_moves else []
    if moved:
        # Resources that now belong to a patient of this batch: keep their ids and map the batch again.
        move_lineage(conn, tables, moved)
        batch = map_batch(conn, tables, codes, ids, chunk, today, reader=reader)
    write_lineage(conn, tables, batch.lineage, batch.version_changes, chunk)
    insert_rows(conn, tables, batch.rows)
    derive(conn, tables, window_months, batch.rows)
    write_digests(conn, tables, [{"patient_key": p.key, "digest": staged[p.key], "person_id": p.person_id,
                                  "run_id": run_id, "map_notes": p.notes.to_json()} for p in batch.patients])
    return batch.resources


def _global_rows(codes: CodeMap, source: str, today: dt.date) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Rows of the tables that belong to no patient, and their warnings."""
    concepts, unverified = concept_rows()
    warnings = {"concepts.csv rows not loaded (required fields not verified)": unverified} if unverified else {}
    return {"source_to_concept_map": source_to_concept_rows(codes), "cdm_source": [cdm_source_row(codes, source, today)],
            "concept": concepts}, warnings


def _lesion_groups(conn: sa.Connection, tables: dict[str, sa.Table]) -> dict[str, int]:
    outcome = tables["dlm_lesion_outcome"]
    return dict(sorted(conn.execute(sa.select(outcome.c.dlm_group, sa.func.count()).group_by(outcome.c.dlm_group)).all()))


def _audit(conn: sa.Connection, tables: dict[str, sa.Table], codes: CodeMap, source: str, today: dt.date,
           data_docs_dir: Path | None, registry: Registry, run_id: str, checks: IncrementalChecks | None = None,
           global_rows: tuple | None = None, refresh_statistics: bool = True) -> dict:
    """Replace the global tables (`global_rows`: _global_rows' result, if the caller has it), count, and run
    the checks on the state `conn` sees (on the changed persons only where `checks` counted them before the
    load: etl.incremental_checks); store their counts. `refresh_statistics`: the load was a bulk one (see
    ANALYZE_SHARE): analyze every table first."""
    rows, warnings = global_rows or _global_rows(codes, source, today)
    replace_global_rows(conn, tables, rows)
    # Indexes after the bulk load (the OHDSI order) but before the audit: its per-person checks look rows up
    # by person_id, and a patient-by-patient load keeps each person's rows together, so a scan per person
    # would read half of each table.
    create_indexes(conn, tables)
    if refresh_statistics:
        # Then statistics, for the audit's queries and the next run's (an incremental run right after a first
        # load at 50,000 patients: 72 s planned on missing statistics, 53 s with them).
        analyze(conn, list(tables.values()))
    notes = registry_notes(conn, tables)
    counts = table_counts(conn, tables)
    groups = _lesion_groups(conn, tables)
    log.info("quality checks")
    checks = checks or IncrementalChecks(conn, tables, today, checks_salt(rows))
    results, scope = checks.run(run_id, data_docs_dir)
    write_state(conn, tables, run_id, results, checks.salt)
    flow = lesion_flow(read_lesions(conn, registry.schemas.dlm))
    return {"rows": counts, "lesion_groups": groups, "warnings": dict(sorted({**notes.warnings, **warnings}.items())),
            "unmapped": notes.unmapped, "checks": results, "check_scope": scope, "lesion_flow": flow}


def _store_audit(registry: Registry, run_id: str, audited: dict) -> dict:
    """Store check results and unmapped codes (whatever the outcome); constraints once published."""
    from etl.quality import store_results, summary

    t = registry.tables
    quality = {**summary(audited["checks"]), "scope": audited["check_scope"]}
    unmapped = [{"run_id": run_id, "source_system": s[:255], "source_code": c[:255], "field": f,
                 "reason": reason, "occurrences": n} for (s, c, f, reason), n in sorted(audited["unmapped"].items())]
    with registry.engine.begin() as conn:
        store_results(conn, t, run_id, audited["checks"])
        conn.execute(t["dlm_unmapped_code"].delete().where(t["dlm_unmapped_code"].c.run_id == run_id))
        if unmapped:
            conn.execute(t["dlm_unmapped_code"].insert(), unmapped)
    if quality["publishable"]:
        # Constraints after the bulk load (a no-op once they exist; on PostgreSQL later loads run under them).
        apply_constraints(registry.engine, registry.schemas, registry.tables)
    return {"rows": audited["rows"], "lesion_groups": audited["lesion_groups"], "warnings": audited["warnings"],
            "quality": quality, "lesion_flow": audited["lesion_flow"],
            "unmapped_codes": [{k: u[k] for k in UNMAPPED_COLUMNS} for u in unmapped]}


@contextmanager
def timed(seconds: dict[str, float], phase: str, peaks: dict[str, float]):
    """Record the wall time of the block in `seconds[phase]` (2 decimals), only if the block completes, and
    the process's peak RSS so far in `peaks[phase]` (MiB): the first phase that holds the run's peak is
    where it was reached (what to look at when sizing a machine)."""
    start = time.perf_counter()
    yield
    seconds[phase] = round(time.perf_counter() - start, 2)
    peaks[phase] = peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's peak resident set size (MiB), as getrusage reports it (KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_and_audit(registry: Registry, codes: CodeMap, run_id: str, source: str, window_months: float,
                   today: dt.date, show_progress=None, data_docs_dir: Path | None = None, remap_all: bool = False,
                   batch_size: int = MAP_BATCH_PATIENTS, workers: int | None = None) -> dict:
    """Write-audit-publish in one transaction: map the changed patients' staging to OMOP + DLM rows batch by
    batch (load_patients; `remap_all` re-maps everyone), replace their rows, derive their outcomes, and audit
    that uncommitted state with the quality checks. Commit only when no critical check fails; otherwise roll
    back, so the published registry is never replaced by data that failed. The check results and the
    unmapped-codes list are stored either way (for trends).

    Returns rows, lesion groups, warnings, unmapped codes (of the whole registry, as a full re-map reports
    them), the `quality` summary, the `lesion_flow` of the audited state (read before commit or rollback, so
    a failed run has it too), `map` (what load_patients did) and `seconds` spent mapping (with loading and
    deriving) and auditing (indexes, counts, quality checks), with the process's `peak_rss_mib` at the end of each.
    """
    t = registry.tables
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}
    with registry.engine.connect() as conn:
        transaction = conn.begin()
        try:
            global_rows = _global_rows(codes, source, today)
            checks = IncrementalChecks(conn, t, today, checks_salt(global_rows[0]))
            with timed(seconds, "map_load_derive", peaks):
                mapped = load_patients(conn, t, codes, run_id, window_months, today, remap_all=remap_all,
                                       batch_size=batch_size, show_progress=show_progress, workers=workers,
                                       before_replace=checks.before)
            with timed(seconds, "audit", peaks):
                audited = _audit(conn, t, codes, source, today, data_docs_dir, registry, run_id, checks, global_rows,
                                 mapped["statistics_refreshed"])
        except BaseException:
            transaction.rollback()
            raise
        from etl.quality import summary

        if summary(audited["checks"])["publishable"]:
            transaction.commit()
        else:
            transaction.rollback()
    return {**_store_audit(registry, run_id, audited), "map": mapped, "seconds": seconds,
            "peak_rss_mib": peaks}


def map_partition(registry: Registry, codes: CodeMap, run_id: str, part: int, parts: int, window_months: float,
                  today: dt.date, remap_all: bool = False, batch_size: int = MAP_BATCH_PATIENTS,
                  show_progress=None, workers: int | None = None) -> dict:
    """Scale-out path: map, load and derive partition `part` of `parts` (a range of patient keys, rule PD3 of
    etl.transform.patients) in its own transaction, and commit it.

    Partitions touch disjoint patients and hand out disjoint new ids (`part` modulo `parts`), so all `parts`
    of one run can load concurrently (separate processes, one PostgreSQL) and give the registry one
    sequential load gives. Run audit_partitions once all have committed. Unlike load_and_audit this is
    not write-audit-publish: a partition is committed before the checks run, so a failed critical check
    fails the run (nothing is analysed or published) but does not restore the previous rows.
    Preconditions: staging is loaded; the registry was loaded sequentially at least once if it holds
    rows from before patient digests existed.
    """
    keys = KeyRange.partition(part, parts)
    t = registry.tables
    with registry.engine.begin() as conn:
        # Short, so that concurrent partitions do not wait on each other: the next audit counts in full.
        clear_state(conn, t)
    with registry.engine.begin() as conn:
        has_digests = conn.execute(sa.select(t["dlm_patient_digest"].c.patient_key).limit(1)).first() is not None
        if not has_digests and conn.execute(sa.select(t["person"].c.person_id).limit(1)).first() is not None:
            raise RunFailed("the registry has rows but no patient digests: run one sequential load first")
        return load_patients(conn, t, codes, run_id, window_months, today, keys=keys, part=part, parts=parts,
                             remap_all=remap_all, batch_size=batch_size, show_progress=show_progress,
                             workers=workers)


def audit_partitions(registry: Registry, codes: CodeMap, run_id: str, source: str, today: dt.date,
                     data_docs_dir: Path | None = None) -> dict:
    """After every map_partition of a run: replace the global tables (vocabulary subset, cdm_source) and run
    the quality checks on the registry as committed. Returns what load_and_audit returns (without `map`)."""
    with registry.engine.begin() as conn:
        audited = _audit(conn, registry.tables, codes, source, today, data_docs_dir, registry, run_id)
    return _store_audit(registry, run_id, audited)


def critical_failure(quality: dict, audit: dict | None = None) -> RunFailed:
    return RunFailed("critical quality checks failed (nothing published): "
                     + ", ".join(quality["failed_critical_checks"]), audit)


def read_lesions(conn: sa.Connection, schema: str | None):
    """The lesion frame of `dlm_lesion_v` as `conn` sees it (inside load_and_audit: the uncommitted state)."""
    lesions = read_frame(conn, sa.select(sa.text("*")).select_from(sa.table("dlm_lesion_v", schema=schema))
                         .order_by(sa.column("person_id"), sa.column("lesion_id")))   # one order on every database
    lesions["ce_ious"] = lesions["ce_ious"].fillna(False).astype(bool)
    return lesions


def read_cohort_frames(registry: Registry):
    """Tidy analysis frames from the analyst views (analysis reads only the registry)."""
    schema = registry.schemas.dlm
    with registry.engine.connect() as conn:
        lesions = read_lesions(conn, schema)
        patients = read_frame(conn, sa.select(sa.text("*")).select_from(sa.table("dlm_patient_survival_v",
                                                                                  schema=schema))
                              .where(sa.column("strategy").is_not(None)).order_by(sa.column("person_id")))
    return lesions, patients


def lesion_flow(lesions) -> dict:
    """Lesion counts in the order of DREAM's flow diagram."""
    dlm = lesions[lesions.dlm_group.isin(["ct_and_mri_disappeared", "ct_disappeared_mri_visible",
                                          "ct_disappeared_mri_missing"])]
    both = dlm[dlm.dlm_group == "ct_and_mri_disappeared"]
    analysed = both[both.mri_protocol_met != False]  # noqa: E712

    def count(frame) -> dict:
        return {"lesions": int(len(frame)), "patients": int(frame.person_id.nunique())}

    return {
        "lesions_collected": count(lesions),
        "disappeared_on_ct": count(dlm),
        "disappeared_on_ct_and_mri": count(both),
        "disappeared_on_ct_visible_on_mri": count(dlm[dlm.dlm_group == "ct_disappeared_mri_visible"]),
        "excluded_imaging_protocol_not_met": count(both[both.mri_protocol_met == False]),  # noqa: E712
        # DREAM's analysed lesions: gone on CT and MRI minus those whose MRI missed the protocol (203 - 51 = 152);
        # lesions whose protocol was not recorded stay in
        "analysed_ct_and_mri_disappeared": count(analysed),
        "evaluable_ct_and_mri_disappeared": count(analysed[analysed.outcome.isin(["true_negative", "residual"])]),
    }


def analyse_and_report(registry: Registry, out_dir: Path, results: dict, at_risk_times=None) -> dict:
    """Compute NPV, survival and the DREAM comparison from the registry; write report and plots."""
    from etl.analysis import analyse
    from etl.analysis.report import write_report

    lesions, patients = read_cohort_frames(registry)
    results.update(analyse(lesions, patients, at_risk_times))
    results["lesion_flow"] = lesion_flow(lesions)
    write_report(results, patients, out_dir)
    return results


def write_results(out_dir: Path, results: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
    return path


def write_unmapped_report(out_dir: Path, unmapped: list[dict]) -> Path:
    import csv

    path = out_dir / "unmapped_codes.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=UNMAPPED_COLUMNS)
        writer.writeheader()
        writer.writerows(unmapped)
    return path


def record_run(registry: Registry, run: dict) -> None:
    """Write (or rewrite) the run's row in dlm_run: status, message and the accounting."""
    table = registry.tables["dlm_run"]
    row = {k: run.get(k) for k in ("run_id", "started_at", "finished_at", "status", "source", "message",
                                   "resources_read", "loaded", "quarantined", "excluded")}
    with registry.engine.begin() as conn:
        conn.execute(table.delete().where(table.c.run_id == row["run_id"]))
        conn.execute(table.insert(), row)


def run(settings: RunSettings) -> dict:
    """extract -> stage -> map -> load -> derive -> check -> analyse. Writes OUT/results.json and
    OUT/dashboard.html always.

    Raises RunFailed (after writing results.json) when a critical quality check fails, and
    etl.run_lock.RegistryBusy (before anything is written) when another run holds the registry.
    """
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    with registry_lock(settings.resolved_registry_url()):
        if settings.source is None:
            with demo_source() as directory:
                return _run(settings, directory, DEMO_LABEL)
        return _run(settings, settings.source, str(settings.source))


def _run(settings: RunSettings, source: str, source_label: str) -> dict:
    run_id = str(uuid.uuid4())
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    results: dict = {"run": {"run_id": run_id, "source": source_label, "started_at": started.isoformat(),
                             "status": "running", "resources_read": 0, "loaded": 0, "quarantined": 0,
                             "excluded": 0, "followup_window_months": settings.followup_window_months}}
    codes = load_code_map(settings.mapping_dirs)
    registry = open_registry(settings.resolved_registry_url())
    results["run"]["registry"] = registry.safe_url
    # A run that dies (killed, machine lost) stays visible as `running` in dlm_run.
    record_run(registry, {**results["run"], "started_at": started})
    seconds = results["run"]["seconds"] = {}
    peaks = results["run"]["peak_rss_mib"] = {}
    try:
        log.info("stage: reading %s", source_label)
        with timed(seconds, "stage", peaks):
            results["run"].update(stage(registry, source, codes, run_id, settings.show_progress, settings.server,
                                        settings.workers))
        log.info("map/load/derive")
        mapped = load_and_audit(registry, codes, run_id, source_label, settings.followup_window_months,
                                settings.today, settings.show_progress, data_docs_for_run(settings.out_dir),
                                remap_all=settings.remap_all, batch_size=settings.map_batch_patients,
                                workers=settings.workers)
        results["run"].update(rows=mapped["rows"], warnings=mapped["warnings"],
                              unmapped_codes=len(mapped["unmapped_codes"]))
        seconds.update(mapped["seconds"])
        peaks.update(mapped["peak_rss_mib"])
        write_unmapped_report(settings.out_dir, mapped["unmapped_codes"])
        results["quality"] = mapped["quality"]
        # The audited counts; a published run's analysis recomputes them from the committed (same) data.
        results["lesion_flow"] = mapped["lesion_flow"]
        if not results["quality"]["publishable"]:
            raise critical_failure(results["quality"])
        log.info("analysis")
        # Quality passed: the results are published (a failure from here on resets the status).
        results["run"]["status"] = "published"
        with timed(seconds, "analysis_report", peaks):
            analyse_and_report(registry, settings.out_dir, results, settings.at_risk_times)
    except RunFailed as exc:
        results["run"].update(status="failed", message=str(exc))
        raise
    except Exception as exc:
        results["run"].update(status="failed", message=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        results["run"]["finished_at"] = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat()
        record_run(registry, {**results["run"], "started_at": started,
                               "finished_at": dt.datetime.fromisoformat(results["run"]["finished_at"])})
        write_results(settings.out_dir, results)
        try:
            write_dashboard(registry, settings.out_dir, run_id, results.get("lesion_flow"))
        except Exception as exc:  # a report that cannot be drawn must not change the run's outcome or exit code
            log.warning("dashboard.html not written: %s: %s", type(exc).__name__, exc)
    return results
