"""A tiny discrete-event core: a simulated clock and a heap of timed callbacks.

Events at the same time run in the order they were scheduled (a sequence
number breaks ties), so a run is deterministic for a given seed. An event is
a heap entry `[time, seq, fn, args]`; cancelling blanks its callback (lazy
deletion), which keeps scheduling to one list and one heap push.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

EventHandle = list  # [time, seq, fn | None, args]


class EventLoop:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[EventHandle] = []
        self._seq = itertools.count()

    def at(self, time: float, fn: Callable[..., Any], *args: Any) -> EventHandle:
        if time < self.now:
            time = self.now
        ev = [time, next(self._seq), fn, args]
        heapq.heappush(self._heap, ev)
        return ev

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> EventHandle:
        return self.at(self.now + delay, fn, *args)

    @staticmethod
    def cancel(ev: EventHandle) -> None:
        ev[2] = None

    def run_until(self, until: float) -> None:
        """Run every event with time <= `until`, then set the clock to `until`."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            time, _, fn, args = pop(heap)
            if fn is None:
                continue
            self.now = time
            fn(*args)
        if until > self.now:
            self.now = until

    def __len__(self) -> int:
        return len(self._heap)
