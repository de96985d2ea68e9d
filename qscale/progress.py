"""A small progress bar on stderr for long runs (quiet when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, label: str, total: float, unit: str = "s", stream=None, width: int = 30) -> None:
        self.label = label
        self.total = max(total, 1e-9)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = self.stream.isatty()
        self._start = time.monotonic()

    def __call__(self, done: float) -> None:
        if not self.enabled:
            return
        frac = min(1.0, done / self.total)
        filled = int(frac * self.width)
        elapsed = time.monotonic() - self._start
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"\r{self.label:<14} [{bar}] {frac:6.1%}  {done:,.0f}/{self.total:,.0f} {self.unit}  {elapsed:5.1f}s wall"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
