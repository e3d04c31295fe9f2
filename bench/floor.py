"""The physical floor: what any loader of this input must at least do. Read every NDJSON file of a cohort,
`json.loads` each line, and COPY one row per resource (type, id, the line as text) into a plain (logged)
PostgreSQL table with psycopg 3's `cursor.copy`, committed once. The column is `text`, like the
registry's staging column `fhir_resource.resource_json`, so the floor does no work the ETL does not.

    python bench/floor.py --source COHORT_DIR --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/db

Prints one JSON object: resources, seconds spent reading+parsing+copying (`work_s`, without interpreter
start-up), and the same in resources/s. Wall time and peak RSS are measured by the parent (bench/run.py).
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

TABLE = "bench_floor_resource"


def ndjson_files(source: Path) -> list[Path]:
    """The cohort's Bulk Data files (`*.ndjson`, `*.ndjson.gz`), in name order."""
    return sorted(p for p in source.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")))


def open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else path.open(encoding="utf-8")


def copy_floor(source: Path, conninfo: str) -> dict:
    import psycopg

    start = time.perf_counter()
    resources = 0
    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
            cur.execute(f"CREATE TABLE {TABLE} (resource_type text NOT NULL, resource_id text NOT NULL, "
                        "resource_json text NOT NULL)")
            with cur.copy(f"COPY {TABLE} (resource_type, resource_id, resource_json) FROM STDIN") as copy:
                for path in ndjson_files(source):
                    with open_text(path) as lines:
                        for line in lines:
                            line = line.strip()
                            if not line:
                                continue
                            resource = json.loads(line)
                            copy.write_row((resource["resourceType"], resource["id"], line))
                            resources += 1
        conn.commit()
    work = time.perf_counter() - start
    return {"resources": resources, "work_s": work, "work_resources_per_s": resources / work if work else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--pg-url", required=True, help="SQLAlchemy or libpq URL of an existing database")
    args = parser.parse_args()
    conninfo = args.pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    print(json.dumps(copy_floor(args.source, conninfo)), flush=True)


if __name__ == "__main__":
    main()
