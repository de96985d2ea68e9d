"""Each baseline at its best within its own parameter space: metric and target searched.

For a fixed metric, a higher target means fewer replicas and a lower SLO
attainment, so the cheapest target that still meets the SLO target is found
by bisection on a log scale (`steps` runs per metric). Targets on requests in
flight are searched around what static-best ran at per replica (0.5x to 4x):
3 steps narrow that factor-8 range to about 1.3x. The best
configuration is the cheapest one that meets the target over all metrics, or,
when none does, the one with the highest attainment.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulations.runner import SimResult


@dataclass(frozen=True)
class Axis:
    """One line of a search: fixed parameters and a target searched over [lo, hi].

    `per_replica_in_flight`: the range is a multiple of the requests in flight per replica
    that static-best ran at (a target around it sizes the fleet like static-best does), so
    a few bisection steps reach a fine resolution; `lo`, `hi` are then those multiples.
    """

    fixed: dict[str, Any]
    param: str
    lo: float
    hi: float
    per_replica_in_flight: bool = False

    def bounds(self, in_flight_per_replica: float) -> tuple[float, float]:
        if not self.per_replica_in_flight:
            return self.lo, self.hi
        c = max(in_flight_per_replica, 0.5)
        return self.lo * c, self.hi * c


# The blog posts' configurations (the policies' defaults: HPA and KEDA on 5 waiting
# requests per pod, Knative's defaults) and the spaces their best is searched in.
BLOG: dict[str, dict[str, Any]] = {"hpa": {}, "keda": {}, "kpa": {}}
SPACES: dict[str, list[Axis]] = {
    "hpa": [Axis({"metric": "in_flight"}, "target_average_value", 0.5, 4, per_replica_in_flight=True),
            Axis({"metric": "waiting"}, "target_average_value", 0.25, 16)],
    "keda": [Axis({"metric": "in_flight"}, "target_average_value", 0.5, 4, per_replica_in_flight=True),
             Axis({"metric": "waiting"}, "target_average_value", 0.25, 16)],
    # KPA aims at target x target_utilization (0.7) in flight per replica.
    "kpa": [Axis({}, "target", 0.5 / 0.7, 4 / 0.7, per_replica_in_flight=True)],
}


@dataclass
class Found:
    result: SimResult
    params: dict[str, Any]
    tried: list[tuple[dict[str, Any], float, float]] = field(default_factory=list)  # params, SLO, GPU-h


Run = Callable[[dict[str, Any]], SimResult]


def search_axis(run: Run, axis: Axis, slo_target: float, steps: int, found: Found | None,
                in_flight_per_replica: float = 1.0) -> Found | None:
    """Cheapest target on one axis meeting `slo_target`; updates `found` with every run."""
    cache: dict[float, SimResult] = {}

    def meets(x: float) -> bool:
        if x not in cache:
            params = {**axis.fixed, axis.param: round(x, 4)}
            cache[x] = run(params)
            nonlocal found
            found = _keep_better(found, cache[x], params, slo_target)
            found.tried.append((params, cache[x].slo_attainment, cache[x].gpu_hours))
        return cache[x].meets(slo_target)

    # Bisection on a log scale, taking `lo` to meet and `hi` to miss without running them:
    # `steps` runs narrow [lo, hi] by a factor 2**steps in log space.
    lo, hi = axis.bounds(in_flight_per_replica)
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return found


def best_config(run: Run, space: list[Axis], slo_target: float, steps: int = 3,
                in_flight_per_replica: float = 1.0) -> Found:
    found: Found | None = None
    for axis in space:
        found = search_axis(run, axis, slo_target, steps, found, in_flight_per_replica)
    assert found is not None
    return found


def _keep_better(found: Found | None, result: SimResult, params: dict[str, Any], target: float) -> Found:
    if found is None:
        return Found(result, params)
    a_ok, b_ok = result.meets(target), found.result.meets(target)
    better = (a_ok and not b_ok) or (a_ok and b_ok and result.gpu_hours < found.result.gpu_hours) or (
        not a_ok and not b_ok and result.slo_attainment > found.result.slo_attainment)
    if better:
        return Found(result, params, found.tried)
    return found
