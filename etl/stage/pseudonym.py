"""Keyed pseudonyms (HMAC-SHA256) for patient ids and lesion identifiers.

The key comes from the environment (`DLMREG_PSEUDONYM_KEY`) and is never stored with the data; the
same key gives the same pseudonym on every run, which keeps loads idempotent and lets a site re-link
with its key if it must. Without a key the built-in demo key is used, which is only for synthetic data.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os

DEMO_KEY = "dlm-registry-demo-key-synthetic-data-only"
log = logging.getLogger(__name__)


class Pseudonymizer:
    def __init__(self, key: str | None = None):
        if key is None:
            key = os.environ.get("DLMREG_PSEUDONYM_KEY")
        if not key:
            log.warning("DLMREG_PSEUDONYM_KEY is not set: using the demo key (acceptable for synthetic data only)")
            key = DEMO_KEY
        self._key = key.encode("utf-8")
        self._patients: dict[str, str] = {}

    def _digest(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def patient(self, patient_id: str) -> str:
        # Staging asks for the same patient's pseudonym for every one of its resources: compute it once.
        found = self._patients.get(patient_id)
        if found is None:
            found = self._patients[patient_id] = self._digest("Patient/" + patient_id)
        return found

    def lesion(self, patient_id: str, identifier: str) -> str:
        """Lesion identifiers are only unique within a patient, so the patient is part of the input."""
        return self._digest(f"Patient/{patient_id}|BodyStructure.identifier|{identifier}")
