"""Registry query results as pandas frames, in memory that follows the distinct values, not the cells.

`pandas.read_sql` holds every row as a tuple of new Python objects, then builds its frame from them: at
50,000 patients reading `dlm_lesion_v` (166,000 lesions) took 290 MiB. The registry's text and date
columns repeat few values (groups, outcomes, regimens, dates), so here rows are fetched in batches (a
server-side cursor where the database has one), each batch becomes one typed array per column, and equal
values share one object. Types are inferred as `read_sql` infers them over the whole column (`Decimal` to
float as its `coerce_float` does; object columns narrowed to int, float or bool where every value allows;
dates stay objects): tests/test_frames.py compares the two on the registry's views, in batches of every
size.
"""
from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa

FETCH_ROWS = 5_000   # rows per batch: a batch's row objects are the read's peak (about 15 MiB at 5,000 rows of dlm_lesion_v)


def read_frame(conn: sa.Connection, query):
    """The rows of `query` (a SQLAlchemy selectable) as a DataFrame, like `pandas.read_sql(query, conn)`.

    Each batch of rows becomes one typed array per column at once, so a numeric column never exists as one
    Python object per row for the whole result; the batches' arrays are joined at the end (`_joined`).
    """
    import numpy as np
    import pandas as pd

    result = conn.execute(query.execution_options(stream_results=True, yield_per=FETCH_ROWS))
    names = list(result.keys())
    parts: list[list] = [[] for _ in names]
    shared: list[dict] = [{} for _ in names]
    for batch in result.partitions():
        for values, column_parts, seen in zip(zip(*batch), parts, shared):
            array = np.empty(len(values), dtype=object)
            array[:] = [_shared(value, seen) for value in values]
            column_parts.append(pd.Series(array, copy=False).infer_objects().to_numpy())
    return pd.DataFrame({name: _joined(column_parts) for name, column_parts in zip(names, parts)},
                        columns=names, copy=False)


def _shared(value, seen: dict):
    """`value` as read_sql keeps it (Decimal as float); equal values of other types share one object."""
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    # keyed by type too: equal values of two types (a date and a datetime) stay apart
    return seen.setdefault((type(value), value), value)


def _joined(parts: list):
    """One column from its batches' arrays, typed as inferring the whole column at once would type it.

    Equal types join as they are, and ints with floats (a batch whose ints had a NULL) join as floats. Any
    other mix (a batch of only NULLs, booleans with NULLs) is inferred again over the whole column.
    """
    import numpy as np
    import pandas as pd

    if not parts:
        return np.empty(0, dtype=object)
    dtypes = {part.dtype for part in parts}
    if len(dtypes) == 1 or all(dtype.kind in "iuf" for dtype in dtypes):
        return np.concatenate(parts)
    whole = np.concatenate([part.astype(object) for part in parts])
    return pd.Series(whole, copy=False).infer_objects().to_numpy()
