"""Subgroup dimensions of the NPV: which category each lesion falls in.

Why one module: results.json, the report's forest plot and the federated site files must cut the
lesions the same way, so the categories are defined once here.
"""
import math

import pandas as pd

from etl.lesions.regimen import BACKBONES, TARGETED_AGENTS

ALL = "all"
SIZE_BANDS = ("lt_10_mm", "10_to_19_mm", "ge_20_mm", "unknown")
DIMENSIONS = {
    ALL: (ALL,),
    "ce_ious": ("used", "not_used"),
    "mri_protocol": ("met", "not_met", "unknown"),
    "baseline_size": SIZE_BANDS,
    "chemo_regimen": BACKBONES,
    "chemo_targeted_agent": TARGETED_AGENTS,
}


def size_band(size):
    """Baseline size band of DREAM-style reports: < 10 mm, 10-19 mm, >= 20 mm, unknown."""
    if size is None or (isinstance(size, float) and math.isnan(size)):
        return "unknown"
    return "lt_10_mm" if size < 10 else "10_to_19_mm" if size < 20 else "ge_20_mm"


def _column(lesions, name, default="unknown"):
    if name not in lesions:
        return pd.Series(default, index=lesions.index)
    return lesions[name].where(lesions[name].notna(), default).astype(str)


def categories(lesions):
    """Category of every lesion in each dimension of ``DIMENSIONS``.

    Parameters
    ----------
    lesions : pandas.DataFrame
        Column ``ce_ious`` and, when available, ``mri_protocol_met``, ``baseline_size_mm``,
        ``chemo_regimen`` and ``chemo_targeted_agent`` (a missing column or value gives
        ``unknown``; CE-IOUS counts as used only when exactly true).

    Returns
    -------
    dict of str -> pandas.Series
        One Series of category labels per dimension, aligned with ``lesions``.
    """
    ce = lesions["ce_ious"].map(lambda v: "used" if v is True or v == 1 else "not_used")
    if "mri_protocol_met" in lesions:
        mri = lesions["mri_protocol_met"].map(
            lambda v: "unknown" if pd.isna(v) else "met" if bool(v) else "not_met")
    else:
        mri = pd.Series("unknown", index=lesions.index)
    if "baseline_size_mm" in lesions:
        size = pd.to_numeric(lesions["baseline_size_mm"], errors="coerce").map(size_band)
    else:
        size = pd.Series("unknown", index=lesions.index)
    return {ALL: pd.Series(ALL, index=lesions.index), "ce_ious": ce, "mri_protocol": mri,
            "baseline_size": size, "chemo_regimen": _column(lesions, "chemo_regimen"),
            "chemo_targeted_agent": _column(lesions, "chemo_targeted_agent")}
