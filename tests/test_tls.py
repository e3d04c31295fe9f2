"""TLS verification is on by default: a FHIR server whose certificate is not trusted is refused with a
clear reason, and the same server is read once its CA is named (`--ca-bundle` or DLMREG_FHIR_CA_BUNDLE)."""
from __future__ import annotations

import json

from etl.cli import EXIT_SOURCE_FAILED, main
from tests.fhir_server import FhirTestServer


def _resources(source):
    return [json.loads(line) for path in sorted(source.glob("*.ndjson"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_untrusted_certificate_is_refused_and_a_named_ca_is_trusted(cohort_factory, tmp_path, capsys, monkeypatch):
    resources = _resources(cohort_factory(6, 3))
    monkeypatch.delenv("DLMREG_FHIR_CA_BUNDLE", raising=False)
    with FhirTestServer(resources, tls=True, page_size=50) as server:
        assert server.url.startswith("https://")
        args = ["run", "--source", server.url, "--out", str(tmp_path / "out"), "--no-progress",
                "--registry", f"sqlite:///{tmp_path / 'r.sqlite'}"]
        assert main(args) == EXIT_SOURCE_FAILED
        reason = capsys.readouterr().err
        assert "certificate" in reason.lower() and "Traceback" not in reason
        assert main(args + ["--ca-bundle", server.ca_file]) == 0
        monkeypatch.setenv("DLMREG_FHIR_CA_BUNDLE", server.ca_file)
        assert main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["run"]["resources_read"] == len(resources)
