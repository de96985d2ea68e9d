"""Run one policy against one traffic stream on a simulated fleet.

The autoscaler in the loop is the live service's own control step
(`policies.control.Controller`: the one `SignalsBuilder`, the policy object,
the one `clamp`), fed with what scraping the simulated replicas' /metrics
would return, optionally late (`scrape_lag_s`) or partly failed
(`scrape_failure_rate`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies import Policy, ReplicaReading, ScaleLimits
from policies.control import Controller
from simulations.coldstart import ColdStartModel
from simulations.engine import EventLoop
from simulations.fleet import Fleet
from simulations.profile import PerformanceProfile
from simulations.request import Request
from simulations.results import RequestStats, TimelineRow
from simulations.traffic import TraceChunk

Progress = Callable[[float], None]  # called with simulated seconds done


@dataclass(frozen=True)
class Partial:
    """A run so far, as a checkpoint sees it (for stopping hopeless runs early)."""

    t: float
    servable: int  # arrived and not rejected
    slo_met: int
    missed: int  # certain misses: a first token later than the SLO, or dropped
    gpu_hours: float

    @property
    def attainment(self) -> float:
        """Requests still waiting for their first token count as misses here."""
        return self.slo_met / self.servable if self.servable else 1.0


@dataclass(frozen=True)
class Checkpoints:
    """Call `call` with the run so far every `every_s` simulated seconds; an exception it
    raises ends the run there (how a tuner prunes a trial)."""

    every_s: float
    call: Callable[[Partial], None]


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    profile: PerformanceProfile
    cold_start: ColdStartModel = ColdStartModel()
    limits: ScaleLimits = ScaleLimits(min_replicas=0, max_replicas=200)
    tick_s: float = Field(2.0, gt=0)
    slo_ttft_s: float = Field(2.0, gt=0)
    client_timeout_s: float = Field(60.0, gt=0)
    gpu_hour_price: float = Field(2.5, ge=0)
    initial_replicas: int = Field(1, ge=0)
    router: str = "round_robin"
    prefix_caching: bool = True
    analytic_decode: bool = True  # False: step every decode iteration (benchmark reference)
    scrape_lag_s: float = Field(0.0, ge=0)
    scrape_failure_rate: float = Field(0.0, ge=0, le=1)
    timeline_interval_s: float = Field(30.0, gt=0)
    flap_window_s: float = Field(300.0, ge=0)
    seed: int = 0
    warmup_s: float = Field(
        120.0, ge=0, description="decisions are not applied before this: windows fill first"
    )
    max_drain_s: float = Field(3600.0, ge=0, description="stop this long after the last arrival")


@dataclass
class SimResult:
    policy: str
    requests: int
    completed: int
    dropped: int
    rejected: int
    slo_attainment: float
    served_slo_attainment: float  # among requests that are not rejected (what sizing can change)
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    e2e_p50_s: float | None
    e2e_p99_s: float | None
    queue_p99_s: float | None
    gpu_hours: float
    ready_hours: float  # replica-hours spent ready or draining (<= gpu_hours)
    cost: float
    scale_events: int
    flaps: int
    replica_starts: int
    mean_cold_start_s: float | None
    duration_s: float
    timeline: list[TimelineRow] = field(default_factory=list)
    oracle_gpu_hours: float | None = None
    bound_gpu_hours: float | None = None
    static_best_gpu_hours: float | None = None

    def meets(self, slo_target: float) -> bool:
        """Does this run meet the target among the requests any fleet could serve?"""
        return self.served_slo_attainment >= slo_target

    def ratio(self, denominator: float | None) -> float | None:
        """GPU-hours as a multiple of a reference's (None when there is none)."""
        return self.gpu_hours / denominator if denominator else None

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("timeline")
        return d


class _Ticker:
    """The autoscaler loop inside the simulation."""

    def __init__(self, loop: EventLoop, fleet: Fleet, controller: Controller, cfg: SimConfig,
                 stats: RequestStats, rng: np.random.Generator, checkpoints: Checkpoints | None = None) -> None:
        self.loop, self.fleet, self.controller, self.cfg, self.stats = loop, fleet, controller, cfg, stats
        self.rng = rng
        self.checkpoints = checkpoints
        self._next_checkpoint = checkpoints.every_s if checkpoints else math.inf
        self.lagged: deque[tuple[float, list[ReplicaReading], float]] = deque()
        self.scale_events = 0
        self.flaps = 0
        self._last_direction = 0
        self._last_change_t = -math.inf
        self.timeline: list[TimelineRow] = []
        self._next_row = 0.0
        self._arrived_at_last_row = 0
        self._acc = {"waiting": 0.0, "running": 0.0, "n": 0}
        self.stopped = False

    def tick(self) -> None:
        if self.stopped:
            return
        loop, fleet, cfg = self.loop, self.fleet, self.cfg
        now = loop.now
        fleet.drop_expired(cfg.client_timeout_s)
        self.stats.fold()
        readings = fleet.readings(cfg.scrape_failure_rate)
        router_waiting = float(len(fleet.pending))
        age = 0.0
        if cfg.scrape_lag_s > 0:
            # The controller sees readings from `scrape_lag_s` ago.
            self.lagged.append((now, readings, router_waiting))
            while len(self.lagged) > 1 and self.lagged[1][0] <= now - cfg.scrape_lag_s:
                self.lagged.popleft()
            t0, readings, router_waiting = self.lagged[0]
            age = now - t0
        current = fleet.desired
        outcome = self.controller.step(now, readings, current, data_age_s=age, router_waiting=router_waiting)
        desired = outcome.desired
        if now < cfg.warmup_s:
            # Warm-up: the policy watches (its windows fill) but the fleet keeps its size,
            # as a deployment that was already running would have had history.
            desired = current
        if desired != current:
            fleet.scale_to(desired, outcome.remove_first)
            self.scale_events += 1
            direction = 1 if desired > current else -1
            if self._last_direction and direction != self._last_direction and now - self._last_change_t <= cfg.flap_window_s:
                self.flaps += 1
            self._last_direction, self._last_change_t = direction, now
        s = outcome.signals
        self._acc["waiting"] += s.total_waiting
        self._acc["running"] += s.total_running
        self._acc["n"] += 1
        if now >= self._next_row:
            self._row(now, desired)
        if now >= self._next_checkpoint:
            self._checkpoint(now)
        loop.after(cfg.tick_s, self.tick)

    def _checkpoint(self, now: float) -> None:
        assert self.checkpoints is not None
        self._next_checkpoint += self.checkpoints.every_s
        s = self.stats
        self.checkpoints.call(Partial(now, s.arrived - s.rejected, s.slo_met, s.slo_missed + s.dropped,
                                      self.fleet.gpu_seconds() / 3600.0))

    def _row(self, now: float, desired: int) -> None:
        ready, starting, draining = self.fleet.counts()
        interval = self.cfg.timeline_interval_s
        n = max(1, self._acc["n"])
        arrivals = self.stats.arrived - self._arrived_at_last_row
        self._arrived_at_last_row = self.stats.arrived
        self.timeline.append(TimelineRow(
            t=now, ready=ready, starting=starting, draining=draining, desired=desired,
            arrival_rate=arrivals / interval if self.timeline else arrivals / max(now, interval),
            waiting=self._acc["waiting"] / n, running=self._acc["running"] / n,
            ttft_p99_s=self.stats.take_window_p99(),
        ))
        self._acc = {"waiting": 0.0, "running": 0.0, "n": 0}
        self._next_row = now + interval


def simulate(
    traffic: Iterator[TraceChunk],
    policy: Policy,
    cfg: SimConfig,
    progress: Progress | None = None,
    on_request: Callable[[Request], None] | None = None,
    policy_name: str | None = None,
    checkpoints: Checkpoints | None = None,
) -> SimResult:
    """Run `policy` on `traffic`. `on_request`: called once with each request when it ends;
    `checkpoints`: the run so far, every so many simulated seconds."""
    loop = EventLoop()
    rng = np.random.default_rng(cfg.seed)
    stats = RequestStats(cfg.slo_ttft_s)
    fleet = Fleet(loop, cfg.profile, cfg.cold_start, stats, rng, cfg.router, cfg.prefix_caching,
                  analytic=cfg.analytic_decode)
    if on_request is not None:
        fleet.on_end(on_request)
    fleet.start_warm(cfg.initial_replicas)
    ticker = _Ticker(loop, fleet, Controller(policy, cfg.limits), cfg, stats, rng, checkpoints)
    loop.at(0.0, ticker.tick)
    last_arrival = _feed(traffic, loop, fleet, progress)
    _drain(loop, fleet, last_arrival + cfg.max_drain_s)
    ticker.stopped = True
    ticker._row(loop.now, fleet.desired)
    duration = loop.now
    gpu_hours = fleet.gpu_seconds() / 3600.0
    fleet.stop_all()
    if progress is not None:
        progress(last_arrival)
    return _result(policy_name or policy.name, cfg, stats, fleet, ticker, duration, gpu_hours)


def _feed(traffic: Iterator[TraceChunk], loop: EventLoop, fleet: Fleet, progress: Progress | None) -> float:
    """Hand every request to the fleet at its arrival time, running the loop up to it; returns
    the last arrival time."""
    rid = 0
    last_arrival = 0.0
    next_progress = 0.0
    for chunk in traffic:
        if len(chunk) and (chunk.arrival[0] < last_arrival or np.any(np.diff(chunk.arrival) < 0)):
            raise ValueError("traffic arrivals must be sorted by time")
        arrival, prompt, output = chunk.arrival.tolist(), chunk.prompt.tolist(), chunk.output.tolist()
        hashes = chunk.hashes
        run_until, arrive = loop.run_until, fleet.arrive
        for i, t in enumerate(arrival):
            run_until(t)
            arrive(Request(rid, t, prompt[i], output[i], hashes[i] if hashes is not None else None))
            rid += 1
        last_arrival = arrival[-1] if arrival else last_arrival
        # Progress at most once a simulated minute.
        if progress is not None and last_arrival >= next_progress:
            progress(last_arrival)
            next_progress = last_arrival + 60.0
    return last_arrival


def _drain(loop: EventLoop, fleet: Fleet, end_limit: float) -> None:
    """Let in-flight work finish (up to `end_limit`), counting GPU time while it does."""
    t = loop.now
    while fleet.in_flight > 0 and t < end_limit:
        t = min(end_limit, t + 30.0)
        loop.run_until(t)


def _result(name: str, cfg: SimConfig, stats: RequestStats, fleet: Fleet, ticker: _Ticker,
            duration: float, gpu_hours: float) -> SimResult:
    cold = fleet.fleet_stats.cold_starts
    return SimResult(
        policy=name,
        requests=stats.arrived,
        completed=stats.completed,
        dropped=stats.dropped,
        rejected=stats.rejected,
        slo_attainment=stats.slo_attainment,
        served_slo_attainment=stats.served_slo_attainment,
        ttft_p50_s=stats.ttft.quantile(0.5),
        ttft_p90_s=stats.ttft.quantile(0.9),
        ttft_p99_s=stats.ttft.quantile(0.99),
        itl_p50_s=stats.itl.quantile(0.5),
        e2e_p50_s=stats.e2e.quantile(0.5),
        e2e_p99_s=stats.e2e.quantile(0.99),
        queue_p99_s=stats.queue.quantile(0.99),
        gpu_hours=gpu_hours,
        ready_hours=fleet.fleet_stats.ready_seconds / 3600.0,
        cost=gpu_hours * cfg.gpu_hour_price,
        scale_events=ticker.scale_events,
        flaps=ticker.flaps,
        replica_starts=fleet.fleet_stats.starts,
        mean_cold_start_s=float(np.mean(cold)) if cold else None,
        duration_s=duration,
        timeline=ticker.timeline,
    )
