"""etl.bulk (issue 9): the registry's bulk insert gives the rows executemany gives, through COPY on
PostgreSQL and executemany on SQLite: columns no row names get their default (NULL), keys that are not
columns are ignored, rows may name different columns, and text with COPY's special characters survives."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from etl import bulk
from etl.registry import open_registry

ROWS = [
    {"measurement_id": 1, "person_id": 7, "measurement_concept_id": 3004410, "measurement_date": dt.date(2021, 3, 4),
     "measurement_datetime": dt.datetime(2021, 3, 4, 8, 30, 1), "measurement_type_concept_id": 32817,
     "value_as_number": 12.5, "value_source_value": "tab\there, newline\nthere, back\\slash", "not_a_column": 1},
    # no datetime, no value: NULL; an int in a float column
    {"measurement_id": 2, "person_id": 7, "measurement_concept_id": 0, "measurement_date": dt.date(2020, 1, 1),
     "measurement_type_concept_id": 32817, "value_as_number": 3, "value_source_value": None},
    {"measurement_id": 3, "person_id": 8, "measurement_concept_id": 0, "measurement_date": dt.date(2019, 12, 31),
     "measurement_type_concept_id": 32817, "value_source_value": "\\N", "unit_source_value": "mm"},
]
READ = ("measurement_id", "person_id", "measurement_concept_id", "measurement_date", "measurement_datetime",
        "value_as_number", "value_source_value", "unit_source_value")


def _read(conn: sa.Connection, table: sa.Table) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.select(*[table.c[c] for c in READ]).order_by(table.c.measurement_id))]


def test_bulk_insert_gives_the_rows_executemany_gives(registry_url):
    registry = open_registry(registry_url)
    table = registry.tables["measurement"]
    with registry.engine.begin() as conn:
        assert bulk.copies(conn) == (conn.dialect.name == "postgresql")
        bulk.insert_rows(conn, table, ROWS)
        bulk.insert_rows(conn, table, [])
        copied = _read(conn, table)
        conn.execute(table.delete())
        for row in ROWS:  # one plain insert per row, each with only the columns it names
            conn.execute(table.insert().values({k: v for k, v in row.items() if k in table.c}))
        assert _read(conn, table) == copied
        conn.execute(table.delete())
        named = sorted(set().union(*ROWS))
        bulk.insert_rows(conn, table, [{k: row.get(k) for k in named} for row in ROWS])   # every row names every key
        assert _read(conn, table) == copied
    assert copied[0][6] == ROWS[0]["value_source_value"]
    assert copied[1][4] is None and copied[1][5] == 3.0
    assert copied[2][6] == "\\N" and copied[2][7] == "mm"
    registry.engine.dispose()


def test_copy_is_part_of_the_callers_transaction(pg_url):
    registry = open_registry(pg_url)
    table = registry.tables["measurement"]
    with pytest.raises(RuntimeError):
        with registry.engine.begin() as conn:
            bulk.insert_rows(conn, table, ROWS)
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 3
            raise RuntimeError("roll back")
    with registry.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
    registry.engine.dispose()


def test_bulk_update_sets_the_values_of_the_rows_with_equal_keys(registry_url):
    """update_rows (COPY into a temporary table and one UPDATE ... FROM on PostgreSQL) updates what one UPDATE
    per row updates: the rows whose key columns all match, none other; twice in one transaction."""
    registry = open_registry(registry_url)
    table = registry.tables["measurement"]
    with registry.engine.begin() as conn:
        bulk.insert_rows(conn, table, ROWS)
        change = [{"person_id": 7, "measurement_concept_id": 0, "unit_source_value": "cm\tx"},
                  {"person_id": 8, "measurement_concept_id": 0, "unit_source_value": None},
                  {"person_id": 9, "measurement_concept_id": 0, "unit_source_value": "no such row"}]
        bulk.update_rows(conn, table, ["person_id", "measurement_concept_id"], change)
        bulk.update_rows(conn, table, ["person_id", "measurement_concept_id"], [])
        assert [(r[0], r[7]) for r in _read(conn, table)] == [(1, None), (2, "cm\tx"), (3, None)]
        bulk.update_rows(conn, table, ["measurement_id"], [{"measurement_id": 1, "unit_source_value": "mm",
                                                             "value_as_number": 1.5}])
        assert [(r[0], r[5], r[7]) for r in _read(conn, table)] == [(1, 1.5, "mm"), (2, 3.0, "cm\tx"), (3, None, None)]
        conn.execute(table.delete())
    registry.engine.dispose()


def test_bulk_update_within_updates_what_the_keys_alone_update(registry_url):
    """update_rows with `within` (the column and values that find the rows to update, as the lineage of a batch
    is found by patient) updates exactly the rows the keys alone update; a row outside `within` is updated
    too (the whole update is made again by the keys), so `within` only changes how the rows are found."""
    registry = open_registry(registry_url)
    table = registry.tables["measurement"]
    keys = ["measurement_id"]
    with registry.engine.begin() as conn:
        bulk.insert_rows(conn, table, ROWS)
        bulk.update_rows(conn, table, keys, [{"measurement_id": 2, "unit_source_value": "a"},
                                             {"measurement_id": 3, "unit_source_value": "b"}], within=("person_id", [7, 8]))
        assert [(r[0], r[7]) for r in _read(conn, table)] == [(1, None), (2, "a"), (3, "b")]
        # measurement 1 belongs to person 7, outside `within`: still updated, as is measurement 3 inside it
        bulk.update_rows(conn, table, keys, [{"measurement_id": 1, "unit_source_value": "c"},
                                             {"measurement_id": 3, "unit_source_value": "d"}], within=("person_id", [8]))
        assert [(r[0], r[7]) for r in _read(conn, table)] == [(1, "c"), (2, "a"), (3, "d")]
        conn.execute(table.delete())
    registry.engine.dispose()
