"""The naive baseline: what a first, straightforward loader does. For each resource: parse the line into
its fhir.resources R4B model (`get_fhir_model_class(type).model_validate`), build one SQLAlchemy ORM
object, `session.add`, `session.commit` (one transaction per resource) into a simple table.

It runs on a sample, not the whole cohort: the first lines of each NDJSON file, as many per file as
that file's share of all resources (so the sample has the cohort's mix of types). The per-resource time
of the sample is extrapolated to the whole cohort by the parent (bench/run.py), which says so.

    python bench/naive.py --source COHORT_DIR --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/db --sample 2000

Prints one JSON object: `sample` (resources loaded), `total` (resources in the cohort), `work_s` and `work_cpu_s` (wall and CPU time of
the parse+insert loop, without interpreter start-up and imports), per-resource rate.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import sqlalchemy as sa
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from floor import ndjson_files, open_text


def count_lines(path: Path) -> int:
    with open_text(path) as lines:
        return sum(1 for line in lines if line.strip())


def sample_lines(source: Path, size: int) -> tuple[list[str], int]:
    """(the sample's lines, the cohort's resource count): the first lines of each file, per type in proportion."""
    counts = {path: count_lines(path) for path in ndjson_files(source)}
    total = sum(counts.values())
    sample: list[str] = []
    for path, count in counts.items():
        take = min(count, max(1, round(size * count / total)))
        with open_text(path) as lines:
            for line in lines:
                if take == 0:
                    break
                if line.strip():
                    sample.append(line.strip())
                    take -= 1
    return sample, total


class Base(DeclarativeBase):
    pass


class NaiveResource(Base):
    """One row per resource, as a first ORM model would have it."""
    __tablename__ = "bench_naive_resource"
    pk: Mapped[int] = mapped_column(primary_key=True)
    resource_type: Mapped[str] = mapped_column(sa.String(64))
    resource_id: Mapped[str] = mapped_column(sa.String(64))
    version_id: Mapped[str | None] = mapped_column(sa.String(64))
    last_updated: Mapped[str | None] = mapped_column(sa.String(64))
    resource_json: Mapped[str] = mapped_column(sa.Text)


def naive_load(lines: list[str], url: str) -> tuple[float, float]:
    """Load `lines` the naive way; returns the loop's wall and CPU seconds."""
    engine = sa.create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    start, cpu = time.perf_counter(), time.process_time()
    with Session(engine) as session:
        for line in lines:
            raw = json.loads(line)
            model = get_fhir_model_class(raw["resourceType"]).model_validate(raw)
            meta = model.meta
            session.add(NaiveResource(
                resource_type=raw["resourceType"], resource_id=model.id,
                version_id=meta.versionId if meta else None,
                last_updated=str(meta.lastUpdated) if meta and meta.lastUpdated else None,
                resource_json=model.model_dump_json()))
            session.commit()
    work, work_cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return work, work_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--pg-url", required=True, help="SQLAlchemy URL of an existing database")
    parser.add_argument("--sample", type=int, default=2000)
    args = parser.parse_args()
    lines, total = sample_lines(args.source, args.sample)
    work, work_cpu = naive_load(lines, args.pg_url)
    print(json.dumps({"sample": len(lines), "total": total, "work_s": work, "work_cpu_s": work_cpu,
                      "work_resources_per_s": len(lines) / work if work else 0.0}), flush=True)


if __name__ == "__main__":
    main()
