"""Quality checks: DQD-derived OMOP checks and DLM rules, run with great-expectations by etl.quality."""
from quality_checks.checks import Check, Frame
from quality_checks.dlm_rules import dlm_plan
from quality_checks.dqd import dqd_plan

__all__ = ["Check", "Frame", "dlm_plan", "dqd_plan"]
