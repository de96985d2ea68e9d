"""The three reference points every comparison is measured against.

* `bound`: GPU-hours no policy can go below for the requests that can be
  served (`simulations/work.py`); not a simulation, so no latency figures.
* `static-best`: the smallest constant fleet whose run meets the SLO target,
  found by bisection over the replica count.
* `oracle`: the cheapest clairvoyant schedule found (`simulations/oracle.py`);
  a constant fleet is a schedule too, so it is never dearer than `static-best`.

Each is a row like any policy's (`SimResult`), selectable with `--policy`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from simulations.oracle import OracleSearch, peak_replicas, search_oracle
from simulations.runner import SimConfig, SimResult
from simulations.work import TraceWork

BOUND, ORACLE, STATIC_BEST = "bound", "oracle", "static-best"
NAMES = (BOUND, ORACLE, STATIC_BEST)

RunStatic = Callable[[int], SimResult]
RunOracle = Callable[[float], SimResult]


@dataclass
class References:
    bound: SimResult
    static_best: SimResult
    static_best_replicas: int
    oracle: SimResult
    oracle_utilization: float | None  # None when the constant fleet was the cheapest schedule

    def rows(self) -> dict[str, SimResult]:
        return {BOUND: self.bound, ORACLE: self.oracle, STATIC_BEST: self.static_best}

    def annotate(self, result: SimResult) -> None:
        """Give a result its three denominators."""
        result.oracle_gpu_hours = self.oracle.gpu_hours
        result.bound_gpu_hours = self.bound.gpu_hours
        result.static_best_gpu_hours = self.static_best.gpu_hours


def bound_result(work: TraceWork, cfg: SimConfig) -> SimResult:
    """The bound as a row: every servable request at the best efficiency, nothing idle."""
    t = work.totals
    hours = work.bound_gpu_hours()
    return SimResult(
        policy=BOUND, requests=t.requests, completed=t.served, dropped=0, rejected=t.rejected,
        slo_attainment=t.served / t.requests if t.requests else 1.0, served_slo_attainment=1.0,
        ttft_p50_s=None, ttft_p90_s=None, ttft_p99_s=None, itl_p50_s=None, e2e_p50_s=None,
        e2e_p99_s=None, queue_p99_s=None, gpu_hours=hours, ready_hours=hours,
        cost=hours * cfg.gpu_hour_price, scale_events=0, flaps=0, replica_starts=0,
        mean_cold_start_s=None, duration_s=work.duration_s,
    )


def search_static(run: RunStatic, work: TraceWork, ceiling: int, slo_target: float) -> tuple[SimResult, int]:
    """Smallest replica count in [1, ceiling] whose run meets `slo_target` (bisection).

    When even `ceiling` misses the target, the ceiling's run is returned.
    """
    runs: dict[int, SimResult] = {}

    def meets(n: int) -> bool:
        if n not in runs:
            runs[n] = run(n)
        return runs[n].meets(slo_target)

    hi = min(ceiling, peak_replicas(work))
    while not meets(hi):
        if hi >= ceiling:
            return runs[hi], hi
        hi = min(ceiling, hi * 2)
    lo = max(0, min(hi - 1, int(work.mean_replicas())))  # lo misses (or is 0)
    if lo >= 1 and meets(lo):
        lo, hi = 0, lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return runs[hi], hi


def find_references(work: TraceWork, cfg: SimConfig, run_static: RunStatic, run_oracle: RunOracle,
                    ceiling: int, slo_target: float, search: OracleSearch | None = None) -> References:
    bound = bound_result(work, cfg)
    static, replicas = search_static(run_static, work, ceiling, slo_target)
    static.policy = STATIC_BEST
    scheduled, utilization = search_oracle(run_oracle, slo_target, lambda r: r.served_slo_attainment, search)
    assert isinstance(scheduled, SimResult)
    if _better(static, scheduled, slo_target):
        oracle, utilization = _relabel(static, ORACLE), None
    else:
        oracle = scheduled
    oracle.policy = ORACLE
    refs = References(bound, static, replicas, oracle, utilization)
    for r in refs.rows().values():
        refs.annotate(r)
    return refs


def _better(a: SimResult, b: SimResult, target: float) -> bool:
    """Is `a` the better reference: meets the target where `b` does not, or as good and cheaper."""
    a_ok, b_ok = a.meets(target), b.meets(target)
    if a_ok != b_ok:
        return a_ok
    if not a_ok:
        return a.served_slo_attainment > b.served_slo_attainment
    return a.gpu_hours < b.gpu_hours


def _relabel(r: SimResult, name: str) -> SimResult:
    return replace(r, policy=name)
