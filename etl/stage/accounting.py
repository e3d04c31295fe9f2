"""Every resource read is counted exactly once: loaded, quarantined or excluded (with a reason)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Accounting:
    loaded: int = 0
    quarantined: Counter = field(default_factory=Counter)
    excluded: Counter = field(default_factory=Counter)
    changes: Counter = field(default_factory=Counter)   # staging: new / changed / unchanged / deleted

    @property
    def resources_read(self) -> int:
        return self.loaded + sum(self.quarantined.values()) + sum(self.excluded.values())

    def as_dict(self) -> dict:
        return {
            "resources_read": self.resources_read,
            "loaded": self.loaded,
            "quarantined": sum(self.quarantined.values()),
            "excluded": sum(self.excluded.values()),
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            "excluded_by_reason": dict(sorted(self.excluded.items())),
            "staging_changes": {k: self.changes[k] for k in ("new", "changed", "unchanged", "deleted")},
        }
