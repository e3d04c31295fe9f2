"""`dlmreg`: the command line. Errors end with a one-line reason and a non-zero exit, no stack trace.

Exit codes: 0 published; 1 a critical quality check failed (nothing published); 2 bad input or
settings (missing source, unreadable mapping, unreachable registry); 3 the FHIR server failed
(unreachable, refused the credentials, answered with an error / OperationOutcome).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_SOURCE_FAILED, EXIT_REGISTRY_BUSY = 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlmreg", description="Disappearing liver metastases registry")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (counts only, never PHI)")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a synthetic DREAM-like cohort as FHIR R4 NDJSON")
    synth.add_argument("--patients", type=int, required=True)
    synth.add_argument("--seed", type=int, default=1)
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="generator parameter, e.g. npv_ct_and_mri=0.7 (see SynthParams)")

    run = commands.add_parser("run", help="extract -> map -> check -> analyse")
    run.add_argument("--source", help="FHIR NDJSON/Bundle directory or file, or a FHIR server base URL "
                                      "(default: the demo cohort)")
    run.add_argument("--registry", help="SQLAlchemy URL (default: sqlite file OUT/dlm_registry.sqlite)")
    run.add_argument("--out", type=Path, default=Path("out"))
    run.add_argument("--mappings", type=Path, action="append", default=[],
                     help="directory of site mapping CSVs (repeatable; also DLMREG_MAPPINGS)")
    run.add_argument("--followup-window", type=float, default=24.0, metavar="MONTHS")
    run.add_argument("--at-risk-every", type=float, default=6.0, metavar="MONTHS")
    run.add_argument("--at-risk-until", type=float, default=60.0, metavar="MONTHS")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--delta", action="store_true",
                     help="the source files hold changes only (new and updated resources, e.g. a saved `_since` "
                          "export), not a snapshot: nothing staged is removed")
    run.add_argument("--remap-all", action="store_true",
                     help="re-map every patient (default: only patients whose staged resources, or the mapping, changed)")
    run.add_argument("--map-batch", type=int, default=500, metavar="PATIENTS",
                     help="patients mapped and loaded together (memory grows with this, not with the cohort)")
    run.add_argument("--workers", type=_workers, default=None, metavar="N",
                     help="worker processes validating resources and reading report texts (0: none; default: "
                          "DLMREG_WORKERS, else one per CPU)")
    server = run.add_argument_group("FHIR server sources (credentials come from the environment, see README)")
    server.add_argument("--extract", choices=["rest", "bulk"], default="rest",
                        help="REST search (default) or Bulk Data $export")
    server.add_argument("--bulk-level", choices=["system", "patient", "group"], default="system")
    server.add_argument("--bulk-group", help="Group id for --bulk-level group")
    server.add_argument("--full-refresh", action="store_true",
                        help="ignore the saved watermarks and pull everything (a snapshot)")
    server.add_argument("--page-size", type=int, default=200, help="REST _count")
    server.add_argument("--overlap", type=float, default=300.0, metavar="SECONDS",
                        help="re-read this long before the saved watermark")
    server.add_argument("--ca-bundle", help="CA certificates to trust (TLS verification is always on)")

    dictionary = commands.add_parser("data-dictionary", help="print (or write) the registry's data dictionary")
    dictionary.add_argument("--out", type=Path, help="write Markdown here instead of printing it")
    sites = commands.add_parser("sites", help="check the sites file; print the Airflow pools it needs")
    sites.add_argument("--file", type=Path, help="sites file (default DLMREG_SITES_FILE, else config/sites.yaml)")
    sites.add_argument("--pools", action="store_true", help="print the pools as JSON for `airflow pools import`")
    nlp = commands.add_parser("nlp", help="print the liver-lesion findings of a report text as JSON")
    nlp.add_argument("file", metavar="FILE", help="report text file (UTF-8), or - for standard input")
    nlp.add_argument("--kind", choices=["imaging", "operative", "pathology", "followup"], default="imaging")
    nlp.add_argument("--lang", choices=["en", "ja", "auto"], default="auto")

    export = commands.add_parser("export-aggregates",
                                 help="write this site's aggregates (counts only, small cells suppressed) as JSON")
    export.add_argument("--registry", help="SQLAlchemy URL (default: sqlite file out/dlm_registry.sqlite)")
    export.add_argument("--out", type=Path, required=True, help="JSON file to write")
    export.add_argument("--min-cell", type=int, default=5, metavar="N",
                        help="counts 1..N-1 are suppressed (default 5; 1 disables suppression)")
    export.add_argument("--site-id", help="site label written into the file")
    roles = commands.add_parser("setup-roles", help="create the PostgreSQL roles (ETL writer, analyst, dashboard "
                                                    "reader) and grant them to login users")
    roles.add_argument("--registry", required=True, help="PostgreSQL URL of a user who may create roles")
    roles.add_argument("--grant", action="append", default=[], metavar="USER=ROLE",
                       help="make an existing login user a member of a role (repeatable)")
    pool = commands.add_parser("pool", help="pool several sites' aggregate files (meta-analysis, pooled KM)")
    pool.add_argument("files", metavar="FILE", nargs="+", type=Path, help="site aggregate JSON files")
    pool.add_argument("--out", type=Path, required=True, help="directory for pooled.json and pooled.md")
    return parser


def _export_aggregates(args) -> int:
    from etl.analysis.aggregates import site_aggregates
    from etl.pipeline import read_cohort_frames
    from etl.registry import open_registry

    url = args.registry or f"sqlite:///{(Path('out') / 'dlm_registry.sqlite').resolve()}"
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise FileNotFoundError(f"registry not found: {url[len('sqlite:///'):]}")
    registry = open_registry(url)
    try:
        lesions, patients = read_cohort_frames(registry)
    finally:
        registry.engine.dispose()
    data = site_aggregates(lesions, patients, site_id=args.site_id, min_cell=args.min_cell)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out} (min cell {data['min_cell']})")
    return 0


def _setup_roles(args) -> int:
    from etl.registry import open_registry
    from registry_schema.roles import setup_roles

    members = {}
    for item in args.grant:
        user, _, role = item.partition("=")
        if not user or not role:
            raise ValueError(f"--grant takes USER=ROLE, got {item!r}")
        members[user] = role
    registry = open_registry(args.registry)
    try:
        for line in setup_roles(registry.engine, registry.tables, registry.schemas, members):
            print(line)
    finally:
        registry.engine.dispose()
    return 0


def _pool(args) -> int:
    from etl.analysis.pooling import pool_sites, pooled_markdown

    sites = []
    for path in args.files:
        try:
            sites.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc.msg})") from None
    pooled = pool_sites(sites)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pooled.json").write_text(json.dumps(pooled, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (args.out / "pooled.md").write_text(pooled_markdown(pooled), encoding="utf-8")
    print(f"pooled {len(sites)} site files: wrote {args.out / 'pooled.json'}, {args.out / 'pooled.md'}")
    return 0


def _nlp(args) -> int:
    from etl.nlp import extract

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    mentions = extract(text, args.kind, args.lang)
    print(json.dumps([{"segment": m.segment, "finding": m.finding, "size_mm": m.size_mm} for m in mentions],
                     ensure_ascii=False, indent=2))
    return 0


def _sites(args) -> int:
    from etl.sites import load_sites, pools

    sites = load_sites(args.file)
    if args.pools:
        print(json.dumps(pools(sites), indent=2))
    else:
        for site in sites:
            print(f"{site.id}: {site.schedule} from {site.start_date}, FHIR {site.fhir_conn_id}, registry "
                  f"{site.registry_conn_id}, pool {site.pool} ({site.pool_slots} slots)")
    return 0


def _synth(args) -> int:
    from etl.synth import SynthParams, write_cohort

    overrides = {}
    for item in args.param:
        name, _, value = item.partition("=")
        if not hasattr(SynthParams(), name):
            raise ValueError(f"unknown synth parameter {name!r}")
        overrides[name] = type(getattr(SynthParams(), name))(value)
    summary = write_cohort(args.out, patients=args.patients, seed=args.seed, params=SynthParams(**overrides))
    print(f"wrote {args.out}: {summary}")
    return 0


def _workers(value: str) -> int:
    from etl.workers import parse_workers

    try:
        return parse_workers(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args) -> int:
    from etl.extract import ServerOptions
    from etl.pipeline import RunSettings, run

    times, t = [], 0.0
    while t <= args.at_risk_until + 1e-9:
        times.append(t)
        t += args.at_risk_every
    settings = RunSettings(source=args.source, registry_url=args.registry, out_dir=args.out,
                           followup_window_months=args.followup_window, mapping_dirs=tuple(args.mappings),
                           at_risk_times=times, show_progress=False if args.no_progress else None,
                           remap_all=args.remap_all, map_batch_patients=args.map_batch, workers=args.workers,
                           server=ServerOptions(mode=args.extract, bulk_level=args.bulk_level, group_id=args.bulk_group,
                                                full=args.full_refresh, page_size=args.page_size,
                                                overlap_seconds=args.overlap, ca_bundle=args.ca_bundle,
                                                delta=args.delta))
    results = run(settings)
    run_info, npv = results["run"], results["npv"]["ct_and_mri_disappeared"]
    print(f"read {run_info['resources_read']} resources: {run_info['loaded']} loaded, "
          f"{run_info['quarantined']} quarantined, {run_info['excluded']} excluded")
    estimate = "n/a" if npv["estimate"] is None else f"{npv['estimate']:.1%}"
    print(f"NPV (CT and MRI disappeared): {estimate} of {npv['true_negative'] + npv['residual']} evaluable lesions")
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.html'}")
    return 0


def _data_dictionary(args) -> int:
    from registry_schema.dictionary import render_data_dictionary

    text = render_data_dictionary()
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


COMMANDS = {"synth": _synth, "run": _run, "data-dictionary": _data_dictionary, "sites": _sites, "nlp": _nlp,
            "export-aggregates": _export_aggregates, "pool": _pool, "setup-roles": _setup_roles}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import sqlalchemy.exc

    from etl.extract import ExtractError
    from etl.pipeline import RunFailed
    from etl.run_lock import RegistryBusy

    try:
        return COMMANDS[args.command](args)
    except RunFailed as exc:
        print(f"dlmreg: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except RegistryBusy as exc:
        print(f"dlmreg: {exc}", file=sys.stderr)
        return EXIT_REGISTRY_BUSY
    except ExtractError as exc:
        print(f"dlmreg: {exc}", file=sys.stderr)
        return EXIT_SOURCE_FAILED
    except (FileNotFoundError, ValueError) as exc:
        print(f"dlmreg: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except sqlalchemy.exc.OperationalError as exc:
        print(f"dlmreg: registry database not reachable: {str(exc.orig).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
