"""Small time-windowed helpers the policies keep their state in.

Every helper takes the time as an argument; none reads a clock.
"""

from __future__ import annotations

import math
from collections import deque


class TimedWindow:
    """Samples `(time, value)` kept for `window_s` seconds, oldest dropped first."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, time: float, value: float) -> None:
        """A non-finite time or value is refused: one NaN would poison every max and mean after it."""
        if not (math.isfinite(time) and math.isfinite(value)):
            return
        self._samples.append((time, value))
        self.evict(time)

    def evict(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    def values(self) -> list[float]:
        return [v for _, v in self._samples]

    def items(self) -> list[tuple[float, float]]:
        return list(self._samples)

    def max(self, default: float) -> float:
        return max((v for _, v in self._samples), default=default)

    def max_since(self, since: float, default: float) -> float:
        """Largest value at or after `since` (or `default` if none, and never below it)."""
        best = default
        for t, v in reversed(self._samples):
            if t < since:
                break
            best = max(best, v)
        return best

    def mean(self) -> float | None:
        if not self._samples:
            return None
        return sum(v for _, v in self._samples) / len(self._samples)

    def total(self) -> float:
        return sum(v for _, v in self._samples)


def halflife_weight(dt: float, halflife_s: float) -> float:
    """Smoothing weight for a new sample `dt` seconds after the last, given a half-life."""
    if halflife_s <= 0:
        return 1.0
    return 1.0 - 0.5 ** (dt / halflife_s)
