"""Keyed pseudonyms (HMAC-SHA256) for patient ids and lesion identifiers.

The key comes from the environment (`DLMREG_PSEUDONYM_KEY`) and is never stored with the data; the
same key gives the same pseudonym on every run, which keeps loads idempotent and lets a site re-link
with its key if it must. Without a key the built-in demo key is used, which is only for synthetic data.

Optional date shift (`DLMREG_DATE_SHIFT_DAYS` = N > 0): every date of a patient moves back by the same
number of days, 1 to N, drawn from the keyed hash of the patient id. Intervals within a patient (survival,
follow-up windows, lesion outcomes) are unchanged; calendar dates are not those of the record. Backwards
only, so no date ends up after the day it was recorded.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os

DATE_SHIFT_ENV = "DLMREG_DATE_SHIFT_DAYS"
MAX_DATE_SHIFT_DAYS = 3650
DEMO_KEY = "dlm-registry-demo-key-synthetic-data-only"
log = logging.getLogger(__name__)


class Pseudonymizer:
    def __init__(self, key: str | None = None, date_shift_days: int | None = None):
        if date_shift_days is None:
            text = os.environ.get(DATE_SHIFT_ENV, "").strip() or "0"
            if not text.isdigit() or int(text) > MAX_DATE_SHIFT_DAYS:
                raise ValueError(f"{DATE_SHIFT_ENV} must be a whole number of days from 0 (off) to "
                                 f"{MAX_DATE_SHIFT_DAYS} (got {text!r})")
            date_shift_days = int(text)
        self.date_shift_days = date_shift_days
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

    def date_shift(self, patient_id: str | None) -> int:
        """Days every date of this patient moves (negative; 0 when the shift is off or there is no patient)."""
        if not self.date_shift_days or not patient_id:
            return 0
        return -(1 + int(self._digest("date-shift|Patient/" + patient_id), 16) % self.date_shift_days)

    def lesion(self, patient_id: str, identifier: str) -> str:
        """Lesion identifiers are only unique within a patient, so the patient is part of the input."""
        return self._digest(f"Patient/{patient_id}|BodyStructure.identifier|{identifier}")
