"""Static checks: pyflakes/pycodestyle errors everywhere and Airflow's AIR rules on the DAGs (ruff)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _ruff() -> list[str]:
    found = shutil.which("ruff")
    if found:
        return [found]
    pytest.importorskip("ruff")
    return [sys.executable, "-m", "ruff"]


def test_code_passes_ruff_with_airflow_rules():
    completed = subprocess.run(_ruff() + ["check", "--select", "E,F,W,AIR", "--ignore", "E501,E741",
                                          "dags", "etl", "registry_schema", "quality_checks", "mappings", "tests", "scripts",
                                          "bench"], cwd=REPO, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:]
