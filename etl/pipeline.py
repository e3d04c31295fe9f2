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
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from etl.dashboard import write_dashboard
from etl.extract import ServerOptions, open_source
from etl.lesions.derive import derive
from etl.load import load_rows
from etl.registry import Registry, open_registry
from etl.run_lock import registry_lock
from etl.stage import load_extract_state, stage_source
from etl.stage.pseudonym import Pseudonymizer
from etl.transform import SUPPORTED_TYPES, map_staging
from etl.transform.vocabulary_tables import cdm_source_row, concept_rows, source_to_concept_rows
from etl.vocabulary import CodeMap, load_code_map
from registry_schema.constraints import apply_constraints

log = logging.getLogger(__name__)
DEMO_PATIENTS, DEMO_SEED = 200, 1527
DEMO_LABEL = "demo cohort (synthetic)"
UNMAPPED_COLUMNS = ["source_system", "source_code", "field", "reason", "occurrences"]


DATA_DOCS = "data_docs"  # great-expectations Data Docs of the run's checks, under OUT


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
          server: ServerOptions = ServerOptions()) -> dict:
    """Extract + stage. Returns the accounting (counts only), with what the source reported."""
    opened = open_source(source, tuple(sorted(SUPPORTED_TYPES)), server,
                         lambda key: load_extract_state(registry.engine, registry.tables, key))
    try:
        accounting = stage_source(registry.engine, registry.tables, opened, codes, Pseudonymizer(),
                                  run_id, SUPPORTED_TYPES, show_progress)
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


def load_and_audit(registry: Registry, codes: CodeMap, run_id: str, source: str, window_months: float,
                   today: dt.date, show_progress=None, data_docs_dir: Path | None = None) -> dict:
    """Write-audit-publish in one transaction: map staging to OMOP + DLM rows, replace the registry's rows,
    derive outcomes, and audit that uncommitted state with the quality checks. Commit only when no
    critical check fails; otherwise roll back, so the published registry is never replaced by data that
    failed. The check results and the unmapped-codes list are stored either way (for trends).

    Returns rows, lesion groups, warnings, unmapped codes, the `quality` summary and the `lesion_flow` of the
    audited state (read before commit or rollback, so a failed run has it too).
    """
    from etl.quality import run_checks, store_results, summary

    t = registry.tables
    with registry.engine.connect() as conn:
        transaction = conn.begin()
        try:
            ctx = map_staging(conn, t, codes, show_progress, today)
            ctx.rows["source_to_concept_map"] = source_to_concept_rows(codes)
            ctx.rows["cdm_source"] = [cdm_source_row(codes, source, today)]
            ctx.rows["concept"], unverified = concept_rows()
            if unverified:
                ctx.warnings["concepts.csv rows not loaded (required fields not verified)"] = unverified
            counts = load_rows(conn, t, ctx.rows, ctx.ids.new, ctx.ids.version_changes)
            groups = derive(conn, t, window_months)
            log.info("quality checks")
            checks = run_checks(conn, t, today, data_docs_dir)
            flow = lesion_flow(read_lesions(conn, registry.schemas.dlm))
        except BaseException:
            transaction.rollback()
            raise
        quality = summary(checks)
        if quality["publishable"]:
            transaction.commit()
        else:
            transaction.rollback()
    unmapped = [{"run_id": run_id, "source_system": s[:255], "source_code": c[:255], "field": f,
                 "reason": reason, "occurrences": n} for (s, c, f, reason), n in sorted(codes.unmapped.items())]
    with registry.engine.begin() as conn:
        store_results(conn, t, run_id, checks)
        conn.execute(t["dlm_unmapped_code"].delete().where(t["dlm_unmapped_code"].c.run_id == run_id))
        if unmapped:
            conn.execute(t["dlm_unmapped_code"].insert(), unmapped)
    if quality["publishable"]:
        # Constraints after the bulk load (a no-op once they exist; on PostgreSQL later loads run under them).
        apply_constraints(registry.engine, registry.schemas, registry.tables)
    return {"rows": counts, "lesion_groups": groups, "warnings": dict(ctx.warnings), "quality": quality,
            "lesion_flow": flow, "unmapped_codes": [{k: u[k] for k in UNMAPPED_COLUMNS} for u in unmapped]}


def critical_failure(quality: dict, audit: dict | None = None) -> RunFailed:
    return RunFailed("critical quality checks failed (nothing published): "
                     + ", ".join(quality["failed_critical_checks"]), audit)


def read_lesions(conn: sa.Connection, schema: str | None):
    """The lesion frame of `dlm_lesion_v` as `conn` sees it (inside load_and_audit: the uncommitted state)."""
    import pandas as pd

    lesions = pd.read_sql(sa.select(sa.text("*")).select_from(sa.table("dlm_lesion_v", schema=schema)), conn)
    lesions["ce_ious"] = lesions["ce_ious"].fillna(False).astype(bool)
    return lesions


def read_cohort_frames(registry: Registry):
    """Tidy analysis frames from the analyst views (analysis reads only the registry)."""
    import pandas as pd

    schema = registry.schemas.dlm
    with registry.engine.connect() as conn:
        lesions = read_lesions(conn, schema)
        patients = pd.read_sql(sa.select(sa.text("*")).select_from(sa.table("dlm_patient_survival_v", schema=schema))
                               .where(sa.column("strategy").is_not(None)), conn)
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
    try:
        log.info("stage: reading %s", source_label)
        results["run"].update(stage(registry, source, codes, run_id, settings.show_progress, settings.server))
        log.info("map/load/derive")
        mapped = load_and_audit(registry, codes, run_id, source_label, settings.followup_window_months,
                                settings.today, settings.show_progress, settings.out_dir / DATA_DOCS)
        results["run"].update(rows=mapped["rows"], warnings=mapped["warnings"],
                              unmapped_codes=len(mapped["unmapped_codes"]))
        write_unmapped_report(settings.out_dir, mapped["unmapped_codes"])
        results["quality"] = mapped["quality"]
        # The audited counts; a published run's analysis recomputes them from the committed (same) data.
        results["lesion_flow"] = mapped["lesion_flow"]
        if not results["quality"]["publishable"]:
            raise critical_failure(results["quality"])
        log.info("analysis")
        # Quality passed: the results are published (a failure from here on resets the status).
        results["run"]["status"] = "published"
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
