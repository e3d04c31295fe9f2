"""SQL is built only with bound parameters (issue #10): a whole run over input carrying a hostile marker in
codes, displays, values, notes and ids sends no statement whose text contains data. Every statement the
registry's engines execute is captured (SQLAlchemy `before_cursor_execute`), on SQLite and PostgreSQL; on
PostgreSQL the COPY rows travel outside the statement text, so they are covered too."""
from __future__ import annotations

import json

import sqlalchemy as sa

from etl.pipeline import RunSettings, run

MARKER = "zq9'marker\"); DROP TABLE person; --"
FRAGMENTS = ("zq9", "DROP TABLE person")


def _poison(source) -> int:
    """Put MARKER into every kind of value that reaches the registry; returns how many values were changed."""
    changed = 0
    for path in sorted(source.glob("*.ndjson")):
        lines = []
        for index, line in enumerate(path.read_text().splitlines()):
            resource = json.loads(line)
            if index % 3 == 0:
                for coding in (resource.get("code") or {}).get("coding", [])[:1]:
                    coding["display"] = MARKER
                    changed += 1
                resource["note"] = [{"text": MARKER}] if resource["resourceType"] in ("Observation", "Condition") \
                    else resource.get("note")
                if resource.get("note") is None:
                    resource.pop("note", None)
            if index % 7 == 1 and resource["resourceType"] == "Condition":
                resource["code"] = {"coding": [{"system": "http://example.org/" + MARKER, "code": MARKER}],
                                    "text": MARKER}
                changed += 1
            lines.append(json.dumps(resource))
        if path.name == "Observation.ndjson":
            bad = json.loads(lines[0]) | {"id": MARKER}        # an invalid id: quarantined with its reason
            lines.append(json.dumps(bad))
            changed += 1
        path.write_text("\n".join(lines) + "\n")
    return changed


def test_no_statement_carries_data(cohort_factory, registry_url, tmp_path):
    source = cohort_factory(12, 4)
    assert _poison(source) > 20
    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", capture)
    try:
        results = run(RunSettings(source=str(source), registry_url=registry_url, out_dir=tmp_path / "out",
                                  show_progress=False))
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", capture)
    assert results["run"]["quarantined"] >= 1 and len(statements) > 100
    leaking = [s[:300] for s in statements if any(fragment in s for fragment in FRAGMENTS)]
    assert leaking == []
    # the marker did reach the registry, as data
    engine = sa.create_engine(registry_url)
    schema = "cdm." if engine.dialect.name == "postgresql" else ""
    with engine.connect() as conn:
        stored = conn.execute(sa.text(f"SELECT count(*) FROM {schema}condition_occurrence "
                                      "WHERE condition_source_value LIKE :m"), {"m": "%zq9%"}).scalar()
    engine.dispose()
    assert stored > 0
