"""A progress display for long steps: a counter line on stderr, refreshed at most twice a second.

It prints counts only (never record content), so it is safe with PHI.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label, self.count, self._start, self._shown = label, 0, time.monotonic(), 0.0

    def step(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._shown > 0.5:
            self._shown = now
            rate = self.count / max(now - self._start, 1e-9)
            self.stream.write(f"\r  {self.label}: {self.count:,} ({rate:,.0f}/s)")
            self.stream.flush()

    def done(self) -> float:
        elapsed = time.monotonic() - self._start
        if self.enabled:
            self.stream.write(f"\r  {self.label}: {self.count:,} in {elapsed:.1f}s\n")
            self.stream.flush()
        return elapsed
