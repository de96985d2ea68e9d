"""Demand in replicas: now, its typical level and trend, and the bursts it has shown.

* `now`: the arrival rate times the replica-seconds per request, smoothed
  with a short half-life;
* `level`: the lower quartile of `now` over the last `level_window_s` (the
  base under the bursts: bursts filling less than 3/4 of the window do not
  move it);
* `trend`: the smallest of the last three changes between the lower
  quartiles of consecutive `trend_window_s` windows, if all three agree: a
  swell moves every window's quartile alike, a burst moves none, a step (and
  the smoothing's ramp after it) moves at most two of the changes;
* `excess`: for each past cold-start-long window, how far demand peaked above
  the level around it, judged in hindsight (the larger of the level before
  the window and the level over the level window after it): a burst that came and went counts in
  full, a lasting shift counts not at all (the level follows it). Its
  `quantile` over a long history is the headroom kept warm, since a burst
  shorter than a cold start can only be served by capacity already there.
"""

from __future__ import annotations

import math
from collections import deque

from policies.windows import TimedWindow, halflife_weight

BUCKET_S = 10.0
TREND_WINDOWS = 4  # a step's ramp moves two consecutive changes at most; a swell moves all three


def _lower_quartile(values: list[float]) -> float:
    return sorted(values)[len(values) // 4]


class DemandTracker:
    def __init__(self, now_halflife_s: float, level_window_s: float, trend_window_s: float,
                 history_s: float) -> None:
        self.now_halflife_s = now_halflife_s
        self.level_window_s = level_window_s
        self.trend_window_s = trend_window_s
        self.now = 0.0
        self._first: float | None = None
        self._last: float | None = None
        self._recent = TimedWindow(max(level_window_s, TREND_WINDOWS * trend_window_s))  # level, trend
        self._buckets: deque[tuple[float, float, float]] = deque()  # (start, max now, level) per bucket
        self._bucket: tuple[float, float] | None = None  # the open bucket: start, max now
        self.excess = TimedWindow(history_s)
        self._range = TimedWindow(history_s)  # every bucket's max, until excesses exist

    def add(self, time: float, replicas: float, lead_s: float) -> None:
        if not (math.isfinite(time) and math.isfinite(replicas) and replicas >= 0):
            return  # a non-finite figure would stay in every window and quantile after it
        if self._last is not None and time <= self._last:
            return  # a clock that stepped back (or a repeated sample) teaches nothing
        if self._last is None:
            self.now, self._first = replicas, time
        else:
            self.now += halflife_weight(time - self._last, self.now_halflife_s) * (replicas - self.now)
        self._last = time
        self._recent.add(time, self.now)
        self._add_to_bucket(time, lead_s)

    def _add_to_bucket(self, time: float, lead_s: float) -> None:
        start = time - time % BUCKET_S
        if self._bucket is not None and self._bucket[0] != start:
            self._buckets.append((self._bucket[0], self._bucket[1], self.level))
            self._range.add(self._bucket[0], self._bucket[1])
            self._finalize(time, lead_s)
        peak = self.now if self._bucket is None or self._bucket[0] != start else max(self._bucket[1], self.now)
        self._bucket = (start, peak)

    def _finalize(self, time: float, lead_s: float) -> None:
        """Judge every window that ended a level window ago: its peak above the levels around it
        (the level now is the lower quartile over the level window that followed it)."""
        settle = lead_s + self.level_window_s
        while self._buckets and time - self._buckets[0][0] >= settle:
            t0, _, level_before = self._buckets[0]
            peak = max(m for t, m, _ in self._buckets if t < t0 + max(lead_s, BUCKET_S))
            self.excess.add(time, max(0.0, peak - max(level_before, self.level)))
            self._buckets.popleft()

    def _window_quartiles(self) -> list[float] | None:
        """Lower quartiles of `now` over the last `TREND_WINDOWS` trend windows, newest first."""
        w, n = self.trend_window_s, TREND_WINDOWS
        if self._last is None or self._first is None or self._last - self._first < n * w:
            return None  # whole windows first: a start-up is not a trend
        windows: list[list[float]] = [[] for _ in range(n)]
        for t, v in self._recent.items():
            k = int((self._last - t) // w)
            if 0 <= k < n:
                windows[k].append(v)
        return [_lower_quartile(x) for x in windows] if all(windows) else None

    @property
    def level(self) -> float:
        """The demand's base: its lower quartile over the level window."""
        if self._last is None:
            return 0.0
        recent = [v for t, v in self._recent.items() if self._last - t < self.level_window_s]
        return _lower_quartile(recent) if recent else self.now

    @property
    def trend(self) -> float:
        """Replicas per second: the smallest change between consecutive window quartiles, if all
        changes agree in sign (0 otherwise)."""
        q = self._window_quartiles()
        if q is None:
            return 0.0
        rises = [newer - older for newer, older in zip(q, q[1:], strict=False)]
        if min(rises) <= 0 <= max(rises):
            return 0.0
        return min(rises, key=abs) / self.trend_window_s

    def headroom(self, quantile: float) -> float:
        """Replicas above the level that bursts reached: the `quantile` of the judged windows,
        or more if a window not yet judged peaked higher above both the level before it and
        the level now (a burst stays a burst until the level shows it was a shift)."""
        level = self.level
        pending = max((m - max(before, level) for _, m, before in self._buckets), default=0.0)
        values = sorted(self.excess.values())
        if not values:  # too early to judge any window: the whole range seen so far
            return max(0.0, pending, self._range.max(default=self.now) - level)
        judged = values[min(len(values) - 1, max(0, int(quantile * len(values) + 0.999999) - 1))]
        return max(0.0, judged, pending)
