"""etl.frames.read_frame gives the frame `pandas.read_sql` gives, on the registry's analyst views and on
hand-made columns of every type it meets (ints with NULL, Decimal, booleans with NULL, dates, text)."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
import sqlalchemy as sa

from etl import frames
from etl.frames import read_frame
from etl.pipeline import RunSettings, run
from etl.registry import open_registry


@pytest.fixture(params=[frames.FETCH_ROWS, 1, 2, 3], ids=lambda rows: f"batches_of_{rows}")
def fetch_rows(request, monkeypatch):
    """Batches of every size: a column's batches may type differently (ints, then ints with a NULL; only NULLs)."""
    monkeypatch.setattr(frames, "FETCH_ROWS", request.param)
    return request.param


@pytest.fixture(scope="module")
def loaded_registry(cohort_factory, tmp_path_factory, module_registry_url):
    """A registry of each kind loaded once (the reading, not the load, differs between the tests)."""
    run(RunSettings(source=str(cohort_factory(40, 3)), registry_url=module_registry_url,
                    out_dir=tmp_path_factory.mktemp("o"), show_progress=False))
    return open_registry(module_registry_url)


def test_views_read_as_read_sql_reads_them(loaded_registry, fetch_rows):
    registry = loaded_registry
    for view, order in (("dlm_lesion_v", ("person_id", "lesion_id")), ("dlm_patient_survival_v", ("person_id",))):
        query = (sa.select(sa.text("*")).select_from(sa.table(view, schema=registry.schemas.dlm))
                 .order_by(*map(sa.column, order)))
        with registry.engine.connect() as conn:
            expected, got = pd.read_sql(query, conn), read_frame(conn, query)
        assert len(expected) > 20
        pd.testing.assert_frame_equal(got, expected)


def test_every_column_type_reads_as_read_sql_reads_it(registry_url, fetch_rows):
    engine = sa.create_engine(registry_url)
    meta = sa.MetaData()
    table = sa.Table("frame_types", meta, sa.Column("i", sa.Integer), sa.Column("i_null", sa.Integer),
                     sa.Column("n", sa.Numeric(10, 2)), sa.Column("f", sa.Float), sa.Column("b", sa.Boolean),
                     sa.Column("d", sa.Date), sa.Column("t", sa.Text), sa.Column("empty", sa.Text),
                     sa.Column("late_null", sa.Integer), sa.Column("late_value", sa.Integer))
    rows = [{"i": k, "i_null": None if k % 3 else k, "n": Decimal(f"{k}.25"), "f": None if k == 2 else k / 4,
             "b": None if k == 1 else k % 2 == 0, "d": dt.date(2020, 1, 1 + k % 5), "t": f"text {k % 2}",
             "empty": None, "late_null": None if k == 6 else k, "late_value": k if k == 6 else None} for k in range(7)]
    with engine.begin() as conn:
        meta.drop_all(conn)
        meta.create_all(conn)
        conn.execute(table.insert(), rows)
    try:
        for query in (sa.select(table).order_by(table.c.i), sa.select(table).where(table.c.i < 0)):
            with engine.connect() as conn:
                expected, got = pd.read_sql(query, conn), read_frame(conn, query)
            pd.testing.assert_frame_equal(got, expected)
        with engine.connect() as conn:
            got = read_frame(conn, sa.select(table).order_by(table.c.i))
        assert got["t"][0] is got["t"][2] and got["d"][0] is got["d"][5]   # equal values share one object
    finally:
        with engine.begin() as conn:
            meta.drop_all(conn)
