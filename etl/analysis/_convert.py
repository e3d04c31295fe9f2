"""Conversion of numeric results to plain JSON values (results.json forbids NaN)."""
import math


def finite_or_none(value):
    """Return ``value`` as a Python float, or None when it is missing, NaN or infinite.

    Parameters
    ----------
    value : number or None

    Returns
    -------
    float or None
        Infinite medians (not reached) and NaN statistics both become None.
    """
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
