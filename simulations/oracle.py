"""The hindsight schedule ("oracle"): a clairvoyant policy for simulation only.

It reads the whole trace ahead of time (`TraceWork`: replica-seconds of engine
work per 10-s bucket) and knows the cold start, so it orders each replica one
cold start before the bucket that needs it and releases it once that demand
has passed. A bucket needs ceil(work / (bucket x utilization)) replicas.

How the cheapest schedule is found (`search_oracle`): the utilization is
searched, not picked from a grid. Starting at 1.0 it doubles or halves until
it brackets the target SLO attainment, then bisects (`OracleSearch.steps`
runs) towards the highest utilization whose run still meets the target, and
keeps the cheapest run that met it; the utilization is not capped at 1.0 (the
work estimate is approximate, so the true break-even can lie above it). The result is the cheapest schedule found,
not a proof of optimality: another schedule shape could do better, and
`bound` (`simulations/work.py`) is the figure nothing can beat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import Decision, Policy, PolicyParams, Signals
from simulations.work import TraceWork


class OracleParams(PolicyParams):
    min_replicas: int = 0
    max_replicas: int = 100_000


class OraclePolicy(Policy):
    """Knows the future: holds max(needed) over [now, now + cold start]."""

    name = "oracle"
    Params = OracleParams

    def __init__(self, work: TraceWork, lead_s: float, utilization: float,
                 params: OracleParams | None = None) -> None:
        super().__init__(params)
        self.need = work.needed(utilization)
        self.bucket_s = work.bucket_s
        self.lead_s = lead_s
        self.utilization = utilization

    def decide(self, signals: Signals) -> Decision:
        b0 = int(signals.time // self.bucket_s)
        b1 = int((signals.time + self.lead_s) // self.bucket_s) + 1
        window = self.need[max(0, b0):max(0, b1)]
        desired = int(window.max()) if len(window) else 0
        return Decision(self.bounded(desired), "clairvoyant", {"lead_s": self.lead_s,
                                                                 "utilization": self.utilization})


@dataclass
class OracleSearch:
    """Knobs of the utilization search (see the module docstring)."""

    start: float = 1.0
    lowest: float = 0.05
    highest: float = 8.0
    steps: int = 5  # bisection runs once bracketed: about 3 % resolution


def search_oracle(
    run: Callable[[float], object],
    slo_target: float,
    attainment: Callable[[object], float],
    search: OracleSearch | None = None,
    gpu_hours: Callable[[object], float] = lambda r: getattr(r, "gpu_hours", 0.0),
) -> tuple[object, float]:
    """Highest utilization whose run meets `slo_target`: (that run, utilization).

    `run(u)` simulates the schedule at utilization u. When even the lowest
    utilization misses the target, the run with the best attainment is returned.
    """
    s = search or OracleSearch()
    runs: dict[float, object] = {}

    def meets(u: float) -> bool:
        if u not in runs:
            runs[u] = run(u)
        return attainment(runs[u]) >= slo_target

    lo, hi = _bracket(meets, s)
    if lo is None:  # even the lowest utilization misses: the best attainment seen
        best = max(runs, key=lambda k: attainment(runs[k]))
        return runs[best], best
    if hi is not None:
        for _ in range(s.steps):
            mid = (lo * hi) ** 0.5
            if meets(mid):
                lo = mid
            else:
                hi = mid
    # Attainment is not strictly monotone in utilization: keep the cheapest run that met it.
    passing = [u for u in runs if attainment(runs[u]) >= slo_target]
    cheapest = min(passing, key=lambda u: (gpu_hours(runs[u]), -u))
    return runs[cheapest], cheapest


def _bracket(meets: Callable[[float], bool], s: OracleSearch) -> tuple[float | None, float | None]:
    """(lo, hi): lo meets the target, hi does not; doubling up or halving down from `start`."""
    if meets(s.start):
        lo = s.start
        while lo * 2 <= s.highest:
            if not meets(lo * 2):
                return lo, lo * 2
            lo *= 2
        return lo, None
    hi = s.start
    while hi / 2 >= s.lowest:
        if meets(hi / 2):
            return hi / 2, hi
        hi /= 2
    return None, hi


def initial_replicas(work: TraceWork, lead_s: float, utilization: float = 0.5) -> int:
    """The warm fleet every compared policy starts with: enough for the demand of the first
    cold start, since nothing ordered at t=0 is ready before then (as a deployment that
    was already running would have)."""
    need = work.needed(utilization)
    first = need[: int(lead_s // work.bucket_s) + 2]
    return max(1, int(first.max())) if len(first) else 1


def peak_replicas(work: TraceWork, utilization: float = 1.0) -> int:
    return max(1, int(np.max(work.needed(utilization), initial=1)))
