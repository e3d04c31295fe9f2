"""Synthetic DREAM-like cohort (``dlmreg synth``): FHIR R4 NDJSON in Bulk Data layout plus truth.json.

Modules: ``params`` (knobs; DREAM defaults read from the reference file), ``codes`` (codings from the
mapping CSV), ``people`` (identities), ``timeline`` (latent clinical course), ``resources`` (FHIR
dicts), ``narrative`` (report texts), ``truth`` (outcomes by the profile's rules), ``writer`` (files).
"""

from .params import SynthParams
from .writer import write_cohort

__all__ = ["SynthParams", "write_cohort"]
