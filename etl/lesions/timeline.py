"""A patient's DLM time line (chemotherapy, hepatectomies, CE-IOUS, recurrence, death, last contact)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

DAYS_PER_MONTH = 30.4375  # 365.25 / 12: the months used for windows and survival times


@dataclass
class Timeline:
    chemo_start: dt.date | None = None
    chemo_end: dt.date | None = None
    hepatectomies: list[dt.date] = field(default_factory=list)
    ce_ious: bool = False
    recurrences: list[dt.date] = field(default_factory=list)
    death: dt.date | None = None
    last_contact: dt.date | None = None

    @property
    def first_hepatectomy(self) -> dt.date | None:
        return self.hepatectomies[0] if self.hepatectomies else None

    @property
    def t0(self) -> dt.date | None:
        # Time zero is the completing (last) hepatectomy of a one- or two-stage resection, as in DREAM.
        return self.hepatectomies[-1] if self.hepatectomies else None


def build_timeline(events: list[dict], last_contact: dt.date | None) -> Timeline:
    """events: rows of dlm_clinical_event for one patient."""
    line = Timeline(last_contact=last_contact)
    hepatectomies = sorted({e["start_date"] for e in events if e["event"] == "hepatectomy"})
    line.hepatectomies = hepatectomies
    chemo = [e for e in events if e["event"] == "chemotherapy"]
    if chemo:
        line.chemo_start = min(e["start_date"] for e in chemo)
        before_surgery = [e["end_date"] or e["start_date"] for e in chemo
                          if not hepatectomies or e["start_date"] <= hepatectomies[0]]
        line.chemo_end = max(before_surgery) if before_surgery else None
    line.ce_ious = any(e["event"] == "ce_ious" for e in events)
    line.recurrences = sorted(e["start_date"] for e in events if e["event"] == "recurrence")
    deaths = [e["start_date"] for e in events if e["event"] == "death"]
    line.death = min(deaths) if deaths else None
    return line


def months_between(start: dt.date, end: dt.date) -> float:
    return (end - start).days / DAYS_PER_MONTH
