"""Registry query results as pandas frames, in memory that follows the distinct values, not the cells.

`pandas.read_sql` holds every row as a tuple of new Python objects, then builds its frame from them: at
50,000 patients reading `dlm_lesion_v` (166,000 lesions) took 290 MiB. The registry's text and date
columns repeat few values (groups, outcomes, regimens, dates), so here rows are fetched in batches (a
server-side cursor where the database has one) into one list per column, in which equal values share one
object. Types are inferred as `read_sql` infers them (`Decimal` to float as its `coerce_float` does;
object columns narrowed to int, float or bool where every value allows; dates stay objects):
tests/test_frames.py compares the two on the registry's views.
"""
from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa

FETCH_ROWS = 20_000


def read_frame(conn: sa.Connection, query):
    """The rows of `query` (a SQLAlchemy selectable) as a DataFrame, like `pandas.read_sql(query, conn)`."""
    import numpy as np
    import pandas as pd

    result = conn.execute(query.execution_options(stream_results=True, yield_per=FETCH_ROWS))
    names = list(result.keys())
    columns: list[list] = [[] for _ in names]
    shared: list[dict] = [{} for _ in names]
    for batch in result.partitions():
        for row in batch:
            for value, column, seen in zip(row, columns, shared):
                if isinstance(value, Decimal):
                    value = float(value)
                elif not (value is None or isinstance(value, (bool, int, float))):
                    # keyed by type too: equal values of two types (a date and a datetime) stay apart
                    value = seen.setdefault((type(value), value), value)
                column.append(value)
    arrays = {}
    for name, column in zip(names, columns):
        array = np.empty(len(column), dtype=object)
        array[:] = column
        arrays[name] = array
    return pd.DataFrame(arrays, columns=names, copy=False).infer_objects()
