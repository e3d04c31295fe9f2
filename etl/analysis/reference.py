"""The DREAM trial's published figures, read from the bundled JSON.

Why: DREAM numbers are data with a citation, not code; every module that compares
against DREAM reads them from ``reference/dream_reference.json`` so they are typed once.
"""
import json
from pathlib import Path

REFERENCE_PATH = Path(__file__).resolve().parent / "reference" / "dream_reference.json"


def load_dream_reference(path=None):
    """Load the DREAM reference figures.

    Parameters
    ----------
    path : str or Path, optional
        JSON file to read; defaults to the copy bundled with this package.

    Returns
    -------
    dict
        The parsed JSON (keys ``source``, ``npv``, ``survival_by_surgical_strategy``, ...).
    """
    with open(path or REFERENCE_PATH, encoding="utf-8") as handle:
        return json.load(handle)
