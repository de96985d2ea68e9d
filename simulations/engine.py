"""A tiny discrete-event core: a simulated clock and a heap of timed callbacks.

Events at the same time run in the order they were scheduled (a sequence
number breaks ties), so a run is deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Event:
    """A scheduled callback; `cancel()` makes it a no-op (lazy deletion)."""

    __slots__ = ("time", "fn", "args", "cancelled")

    def __init__(self, time: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.time = time
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()

    def at(self, time: float, fn: Callable[..., Any], *args: Any) -> Event:
        if time < self.now:
            time = self.now
        ev = Event(time, fn, args)
        heapq.heappush(self._heap, (time, next(self._seq), ev))
        return ev

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Event:
        return self.at(self.now + delay, fn, *args)

    def next_time(self) -> float:
        """Time of the next live event, or +inf."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else float("inf")

    def run_until(self, until: float) -> None:
        """Run every event with time <= `until`, then set the clock to `until`."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            _, _, ev = pop(heap)
            if ev.cancelled:
                continue
            self.now = ev.time
            ev.fn(*ev.args)
        self.now = max(self.now, until)

    def __len__(self) -> int:
        return len(self._heap)
