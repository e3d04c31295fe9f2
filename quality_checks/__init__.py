"""Quality checks: DQD-derived OMOP checks and DLM rules, run with great-expectations by etl.quality."""
from quality_checks.checks import Check
from quality_checks.dlm_rules import dlm_checks
from quality_checks.dqd import dqd_checks

__all__ = ["Check", "dlm_checks", "dqd_checks"]
