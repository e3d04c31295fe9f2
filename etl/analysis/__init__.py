"""Analysis of the DLM registry: NPV per lesion group, survival by surgical strategy, and
comparison with the DREAM trial.

Why one entry point: the CLI and the analysis DAG both call :func:`analyse` on frames built
from the registry's SQL views, so results.json has one producer.
"""
from .comparison import compare_with_dream
from .npv import npv_sensitivity, npv_subgroups, npv_summary
from .reference import load_dream_reference
from .survival import survival_by_strategy


def analyse(lesions, patients, at_risk_times=None):
    """Compute every analysis result as JSON-ready values (no NaN, no numpy types).

    Preconditions: ``lesions`` has one row per lesion and ``patients`` one row per patient
    of the survival population (see :func:`etl.analysis.survival.survival_by_strategy`).

    Parameters
    ----------
    lesions : pandas.DataFrame
        Columns ``person_id``, ``lesion_id``, ``dlm_group``, ``outcome``, ``ce_ious``; for the
        subgroups and sensitivity analyses also the other columns of the registry's lesion view.
    patients : pandas.DataFrame
        Columns ``person_id``, ``strategy``, ``rfs_months``, ``rfs_event``, ``os_months``,
        ``os_event``.
    at_risk_times : sequence of float, optional
        Times of the at-risk counts; default every 6 months from 0 to 60.

    Returns
    -------
    dict
        ``npv`` (:func:`npv_summary`), ``npv_subgroups`` (:func:`npv_subgroups`),
        ``npv_sensitivity`` (:func:`npv_sensitivity`), ``survival_by_surgical_strategy``
        (:func:`survival_by_strategy`) and ``comparison`` (:func:`compare_with_dream`).
    """
    npv = npv_summary(lesions)
    survival = survival_by_strategy(patients, at_risk_times)
    return {
        "npv": npv,
        "npv_subgroups": npv_subgroups(lesions),
        "npv_sensitivity": npv_sensitivity(lesions),
        "survival_by_surgical_strategy": survival,
        "comparison": compare_with_dream(npv, survival, load_dream_reference()),
    }


__all__ = ["analyse", "compare_with_dream", "load_dream_reference", "npv_sensitivity", "npv_subgroups",
           "npv_summary", "survival_by_strategy"]
