"""etl.gx_configurations: great-expectations gives the same results with its configurations built once per
expectation and validation as with them rebuilt on every read, and is left as it was."""
from __future__ import annotations

import datetime as dt
from contextlib import nullcontext

import pytest

from etl.gx_configurations import cached_configurations
from etl.pipeline import RunSettings, run
from etl.quality import _gx_context, plan
from etl.registry import open_registry

gx, _ = _gx_context(None)  # imported as the check stage imports it (analytics off)
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.expectations.expectation import Expectation  # noqa: E402


@pytest.fixture(scope="module")
def registry(cohort_factory, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gx")
    url = f"sqlite:///{directory / 'r.sqlite'}"
    run(RunSettings(source=str(cohort_factory(10, 1)), registry_url=url, out_dir=directory / "o", show_progress=False))
    return open_registry(url)


def test_every_check_of_a_registry_has_the_same_result_either_way(registry):
    """Every frame of the registry validated whole by all its checks, with every unexpected value and row
    index in the results (COMPLETE), with and without the cache."""
    _, context = _gx_context(None)
    source = context.data_sources.add_pandas("registry")
    with registry.engine.connect() as conn:
        checks, frames = plan(conn, registry.tables, dt.date(2026, 1, 15))
        compared, unexpected = 0, 0
        for name, frame in frames.items():
            suite = gx.ExpectationSuite(name=name, expectations=[
                getattr(gxe, c.expectation)(**c.kwargs, meta={"check": c.name}) for c in checks if c.frame == name])
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            data = frame.read(conn)
            outcomes = []
            for cached in (False, True):
                with cached_configurations() if cached else nullcontext():
                    outcome = batch.get_batch(batch_parameters={"dataframe": data}).validate(
                        suite, result_format="COMPLETE").to_json_dict()
                outcomes.append({k: v for k, v in outcome.items() if k != "meta"})  # meta: the time it ran
            assert outcomes[0] == outcomes[1], name
            compared += len(outcomes[0]["results"])
            unexpected += sum(1 for r in outcomes[0]["results"] if r["result"].get("unexpected_count"))
    assert compared == len(checks) and unexpected > 0


def test_the_property_is_restored_after_the_block_even_on_failure():
    built = Expectation.__dict__["configuration"]
    expectation = gxe.ExpectColumnValuesToNotBeNull(column="a")
    with pytest.raises(RuntimeError), cached_configurations():
        assert Expectation.__dict__["configuration"] is not built
        assert expectation.configuration is expectation.configuration  # built once
        raise RuntimeError("a validation that failed")
    assert Expectation.__dict__["configuration"] is built
    assert expectation.configuration is not expectation.configuration  # rebuilt on every read again


def test_another_version_is_left_alone(monkeypatch):
    monkeypatch.setattr(gx, "__version__", "2.0.0")
    built = Expectation.__dict__["configuration"]
    with cached_configurations():
        assert Expectation.__dict__["configuration"] is built
