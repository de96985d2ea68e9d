"""Run results: per-request latencies folded into log histograms (flat memory), run totals,
and the replica timeline."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from simulations.request import Request


class LogHistogram:
    """Quantiles within 1 % for values from 1 ms to ~28 h, in a fixed 1,000-bin array.

    Values are buffered and folded into the bins in batches (numpy), so adding
    one costs a list append and memory stays flat however long the run.
    """

    LO, HI, BINS = 1e-3, 1e5, 1000
    BATCH = 16_384

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 2, dtype=np.int64)  # [under, bins..., over]
        self._scale = self.BINS / math.log(self.HI / self.LO)
        self._buffer: list[float] = []
        self.add = self._buffer.append  # type: ignore[method-assign]
        self._n = 0

    def add(self, v: float) -> None:  # replaced per instance by the buffer's append
        self._buffer.append(v)

    def _fold(self) -> None:
        if not self._buffer:
            return
        v = np.asarray(self._buffer, dtype=np.float64)
        self._buffer.clear()
        idx = np.empty(len(v), dtype=np.int64)
        low, high = v < self.LO, v >= self.HI
        mid = ~(low | high)
        idx[low] = 0
        idx[high] = self.BINS + 1
        idx[mid] = 1 + (np.log(v[mid] / self.LO) * self._scale).astype(np.int64)
        self.counts += np.bincount(idx, minlength=self.BINS + 2)
        self._n += len(v)

    def maybe_fold(self) -> None:
        if len(self._buffer) >= self.BATCH:
            self._fold()

    @property
    def n(self) -> int:
        self._fold()
        return self._n

    def quantile(self, q: float) -> float | None:
        self._fold()
        if self._n == 0:
            return None
        rank = max(1, math.ceil(q * self._n))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        if i == 0:
            return self.LO
        if i >= self.BINS + 1:
            return self.HI
        # Geometric middle of bin i.
        return self.LO * math.exp((i - 0.5) / self._scale)


@dataclass
class TimelineRow:
    t: float
    ready: int
    starting: int
    draining: int
    desired: int
    arrival_rate: float
    waiting: float
    running: float
    ttft_p99_s: float | None


@dataclass
class RequestStats:
    slo_ttft_s: float
    ttft: LogHistogram = field(default_factory=LogHistogram)
    itl: LogHistogram = field(default_factory=LogHistogram)
    e2e: LogHistogram = field(default_factory=LogHistogram)
    queue: LogHistogram = field(default_factory=LogHistogram)
    arrived: int = 0
    completed: int = 0
    dropped: int = 0
    rejected: int = 0
    slo_met: int = 0
    slo_missed: int = 0  # first token later than the SLO
    window_ttfts: list[float] = field(default_factory=list)  # since the last timeline row

    def first_token(self, req: Request) -> None:
        ttft = req.ttft_s
        assert ttft is not None
        self.ttft.add(ttft)
        self.window_ttfts.append(ttft)
        if ttft <= self.slo_ttft_s:
            self.slo_met += 1
        else:
            self.slo_missed += 1
        queue = req.queue_s
        if queue is not None:
            self.queue.add(queue)

    def finished(self, req: Request) -> None:
        self.completed += 1
        e2e = req.e2e_s
        assert e2e is not None
        self.e2e.add(e2e)
        itl = req.itl_s
        if itl is not None:  # more than one output token
            self.itl.add(itl)

    def fold(self) -> None:
        """Bound the buffers (called from the periodic tick)."""
        for h in (self.ttft, self.itl, self.e2e, self.queue):
            h.maybe_fold()

    def take_window_p99(self) -> float | None:
        w = self.window_ttfts
        self.window_ttfts = []
        if not w:
            return None
        return float(np.quantile(np.array(w), 0.99))

    @property
    def slo_attainment(self) -> float:
        """Share of all arrived requests whose first token came within the SLO."""
        return self.slo_met / self.arrived if self.arrived else 1.0

    @property
    def served_slo_attainment(self) -> float:
        """The same share among requests the profile can serve at all (rejected ones left out):
        what a fleet size can change, so what reference points are searched on."""
        servable = self.arrived - self.rejected
        return self.slo_met / servable if servable else 1.0
