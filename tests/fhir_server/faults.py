"""Fault injection settings for the FHIR TEST server (not for production use)."""
from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = ("429", "503", "drop", "truncate", "invalid_json", "expire_token")


@dataclass(frozen=True)
class Faults:
    """Make every ``every``-th request fail, with the next kind of ``kinds`` in rotation.

    Requests are counted from the moment the ``Faults`` object is assigned to ``server.faults``,
    across all requests (metadata, token, searches, export polls, file downloads). With
    ``every=5`` requests 5, 10, 15, ... fail; ``every=1`` makes every request fail. ``limit`` caps
    the number of injected faults (``None``: no cap). ``Faults()`` injects nothing.

    Kinds: ``"429"`` (Retry-After in seconds on odd 429s, an HTTP-date on even ones), ``"503"``
    (OperationOutcome), ``"drop"`` (connection closed, no response), ``"truncate"`` (200 with the
    first half of the body, then the connection is closed), ``"invalid_json"`` (200 with a body that
    is not JSON), ``"expire_token"`` (401 as for an expired token). A faulted request has no side
    effect on the server.
    """

    every: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    limit: int | None = None

    def __post_init__(self):
        if isinstance(self.kinds, str):
            object.__setattr__(self, "kinds", (self.kinds,))
        else:
            object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.every < 0:
            raise ValueError("every must be >= 0")
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {FAULT_KINDS}")
        if self.every and not self.kinds:
            raise ValueError("kinds must not be empty")

    @property
    def active(self) -> bool:
        return self.every > 0 and bool(self.kinds) and (self.limit is None or self.limit > 0)
