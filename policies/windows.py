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


class BucketedQuantile:
    """Quantile over a long window, kept as per-bucket means so memory stays small.

    A 1-hour window in 60-s buckets holds at most 61 numbers whatever the tick rate.
    """

    def __init__(self, window_s: float, bucket_s: float) -> None:
        self.bucket_s = bucket_s
        self._buckets = TimedWindow(window_s)
        self._current_start: float | None = None
        self._current_sum = 0.0
        self._current_n = 0

    def add(self, time: float, value: float) -> None:
        start = math.floor(time / self.bucket_s) * self.bucket_s
        if self._current_start is not None and start != self._current_start:
            self._buckets.add(self._current_start, self._current_sum / self._current_n)
            self._current_sum, self._current_n = 0.0, 0
        self._current_start = start
        self._current_sum += value
        self._current_n += 1
        self._buckets.evict(time)

    def quantile(self, q: float) -> float | None:
        values = self._buckets.values()
        if self._current_n:
            values.append(self._current_sum / self._current_n)
        if not values:
            return None
        values.sort()
        # Nearest-rank on the sorted bucket means (q=0 is the minimum, q=1 the maximum).
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def halflife_weight(dt: float, halflife_s: float) -> float:
    """Smoothing weight for a new sample `dt` seconds after the last, given a half-life."""
    if halflife_s <= 0:
        return 1.0
    return 1.0 - 0.5 ** (dt / halflife_s)


class HoltForecaster:
    """Holt's double exponential smoothing (level and trend) for irregular sample times.

    Smoothing is expressed as half-lives so the same settings mean the same thing
    at a 2-s live tick and at any simulated tick.
    """

    def __init__(self, level_halflife_s: float, trend_halflife_s: float) -> None:
        self.level_halflife_s = level_halflife_s
        self.trend_halflife_s = trend_halflife_s
        self.level: float | None = None
        self.trend = 0.0  # units of the series per second
        self._last_time: float | None = None

    def update(self, time: float, value: float) -> None:
        if self.level is None or self._last_time is None:
            self.level, self._last_time = value, time
            return
        dt = time - self._last_time
        if dt <= 0:
            return
        alpha = halflife_weight(dt, self.level_halflife_s)
        beta = halflife_weight(dt, self.trend_halflife_s)
        predicted = self.level + self.trend * dt
        level = alpha * value + (1 - alpha) * predicted
        self.trend = beta * (level - self.level) / dt + (1 - beta) * self.trend
        self.level = level
        self._last_time = time

    def forecast(self, horizon_s: float) -> float | None:
        if self.level is None:
            return None
        return max(0.0, self.level + self.trend * horizon_s)


class SlidingMax:
    """Maximum of the samples of the last `window_s` seconds (monotonic deque, O(1) amortized)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, time: float, value: float) -> float:
        """Add a sample; returns the maximum over the window ending at `time`."""
        while self._samples and self._samples[-1][1] <= value:
            self._samples.pop()
        self._samples.append((time, value))
        cutoff = time - self.window_s
        while self._samples[0][0] < cutoff:
            self._samples.popleft()
        return self._samples[0][1]


class BucketedMaxQuantile:
    """Quantile of per-bucket maxima over a long window (memory: one number per bucket)."""

    def __init__(self, window_s: float, bucket_s: float) -> None:
        self.bucket_s = bucket_s
        self._buckets = TimedWindow(window_s)
        self._current_start: float | None = None
        self._current_max = -math.inf

    def add(self, time: float, value: float) -> None:
        start = math.floor(time / self.bucket_s) * self.bucket_s
        if self._current_start is not None and start != self._current_start:
            self._buckets.add(self._current_start, self._current_max)
            self._current_max = -math.inf
        self._current_start = start
        self._current_max = max(self._current_max, value)
        self._buckets.evict(time)

    def quantile(self, q: float) -> float | None:
        values = self._buckets.values()
        if self._current_start is not None:
            values.append(self._current_max)
        if not values:
            return None
        values.sort()
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]
