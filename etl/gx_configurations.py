"""Validate with great-expectations without rebuilding each expectation's configuration a hundred times.

great-expectations 1.24 derives `Expectation.configuration` (a pydantic `.dict()` of every field, then an
ExpectationConfiguration) anew each time it is read, and one validation reads it about a hundred times per
expectation: once per domain, success and runtime key, per metric dependency and per result. On the
registry's 876 checks that was a third of the audit's time (40 patients: 11.5 s, 7.6 s with this).

`cached_configurations()` makes the property remember its value per expectation object for the duration of
one validation, and forgets everything when it ends. Within a validation nothing changes an expectation's
fields: great-expectations builds the expectations it validates from the suite's configurations and only
reads them. Only the version it was checked against is changed (tests/test_gx_configurations.py compares
every result with and without it); any other version validates unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager

CHECKED_VERSION = "1.24."


@contextmanager
def cached_configurations():
    """Within the block, each expectation's configuration is built once (and shared by its readers)."""
    import great_expectations as gx
    from great_expectations.expectations.expectation import Expectation

    if not gx.__version__.startswith(CHECKED_VERSION) or "configuration" not in Expectation.__dict__:
        yield
        return
    built = Expectation.__dict__["configuration"]
    remembered: dict[int, tuple] = {}  # id -> (the expectation, kept alive so that its id is not reused; value)

    def configuration(self):
        found = remembered.get(id(self))
        if found is None:
            found = remembered[id(self)] = (self, built.fget(self))
        return found[1]

    Expectation.configuration = property(configuration, doc=built.__doc__)
    try:
        yield
    finally:
        Expectation.configuration = built
        remembered.clear()
