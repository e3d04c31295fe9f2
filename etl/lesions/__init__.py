"""Lesions: identity (BodyStructure), per-lesion facts from Observations, group/outcome and patient course."""
