"""The simulated fleet: replicas starting, ready and draining, a router, cold starts.

Scale-down picks victims like a ReplicaSet: replicas still starting first, then
the most recently started ready ones. A draining replica takes no new requests,
finishes what it accepted, then stops; GPU time counts from creation to stop.

Observers (`on_end`) hear of each request once, when it ends: completed, dropped or rejected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

from policies import ReplicaReading, ReplicaState
from policies.victims import removal_order
from simulations.coldstart import ColdStartModel
from simulations.engine import EventHandle, EventLoop
from simulations.profile import PerformanceProfile
from simulations.replica import ReplicaHooks, ReplicaModel
from simulations.request import Request
from simulations.results import RequestStats
from simulations.router import ROUTERS


@dataclass(eq=False)
class SimReplica:
    model: ReplicaModel
    created_at: float
    state: ReplicaState = ReplicaState.STARTING
    ready_at: float | None = None
    stopped_at: float | None = None
    ready_event: EventHandle | None = None


@dataclass
class FleetStats:
    gpu_seconds: float = 0.0  # of stopped replicas; live ones are added on read
    ready_seconds: float = 0.0  # time stopped replicas spent ready or draining
    starts: int = 0
    cold_starts: list[float] = field(default_factory=list)


class Fleet(ReplicaHooks):
    def __init__(
        self,
        loop: EventLoop,
        profile: PerformanceProfile,
        cold_start: ColdStartModel,
        stats: RequestStats,
        rng: np.random.Generator,
        router: str = "round_robin",
        prefix_caching: bool = True,
        analytic: bool = True,
    ) -> None:
        self.loop = loop
        self.analytic = analytic
        self.profile = profile
        self.cold_start = cold_start
        self.stats = stats
        self.rng = rng
        self.router = ROUTERS[router]()
        self.prefix_caching = prefix_caching
        self.replicas: list[SimReplica] = []  # every replica not yet stopped
        self.ready: list[ReplicaModel] = []
        self.pending: deque[Request] = deque()  # arrived while no replica was ready
        self.fleet_stats = FleetStats()
        self._by_model: dict[int, SimReplica] = {}
        self._warm_nodes: list[float] = [-1e18] * cold_start.warm_nodes  # freed-at times
        self._n = 0
        self.in_flight = 0
        self.end_observers: list[Callable[[Request], None]] = []

    def on_end(self, observer: Callable[[Request], None]) -> None:
        """Call `observer(req)` once for every request when it ends (completed, dropped, rejected)."""
        self.end_observers.append(observer)

    def _ended(self, req: Request) -> None:
        self.in_flight -= 1
        if self.end_observers:
            for observer in self.end_observers:
                observer(req)

    # --- sizing -----------------------------------------------------------------------

    @property
    def desired(self) -> int:
        """Replicas asked for: starting plus ready (draining ones are on their way out)."""
        return sum(1 for r in self.replicas if r.state is not ReplicaState.DRAINING)

    def scale_to(self, n: int, remove_first: Collection[str] = ()) -> None:
        """`remove_first`: replicas to remove before healthy ones on a scale-down (unreadable ones)."""
        current = self.desired
        for _ in range(n - current):
            self._start()
        if n < current:
            self._remove(current - n, remove_first)

    def start_warm(self, n: int) -> None:
        """Replicas already serving when the run begins."""
        for _ in range(n):
            rep = self._start(cold_start_s=0.0)
            rep.created_at = self.loop.now
            self._ready(rep)

    def _take_warm_node(self) -> bool:
        keep = self.cold_start.node_keepalive_s
        now = self.loop.now
        self._warm_nodes = [t for t in self._warm_nodes if now - t <= keep or t < -1e17]
        if self._warm_nodes:
            self._warm_nodes.pop()
            return True
        return False

    def _start(self, cold_start_s: float | None = None) -> SimReplica:
        self._n += 1
        model = ReplicaModel(
            f"replica-{self._n}", self.profile, self.loop, self, self.prefix_caching, analytic=self.analytic
        )
        rep = SimReplica(model, self.loop.now)
        self.replicas.append(rep)
        self._by_model[id(model)] = rep
        self.fleet_stats.starts += 1
        if cold_start_s is None:
            cold_start_s = self.cold_start.sample(self.rng, self._take_warm_node())
            self.fleet_stats.cold_starts.append(cold_start_s)
            rep.ready_event = self.loop.after(cold_start_s, self._ready, rep)
        return rep

    def _ready(self, rep: SimReplica) -> None:
        rep.state = ReplicaState.READY
        rep.ready_at = self.loop.now
        rep.ready_event = None
        self.ready.append(rep.model)
        while self.pending:
            self._route(self.pending.popleft())

    def _remove(self, count: int, remove_first: Collection[str]) -> None:
        order = removal_order(self.replicas, lambda r: r.created_at, lambda r: r.model.name, remove_first)
        for rep in order[:count]:
            if rep.state is ReplicaState.STARTING:
                if rep.ready_event is not None:
                    EventLoop.cancel(rep.ready_event)
                self._stop(rep)
            else:
                rep.state = ReplicaState.DRAINING
                self.ready.remove(rep.model)
                if rep.model.outstanding == 0:
                    self._stop(rep)

    def _stop(self, rep: SimReplica) -> None:
        rep.stopped_at = self.loop.now
        self.fleet_stats.gpu_seconds += rep.stopped_at - rep.created_at
        if rep.ready_at is not None:
            self.fleet_stats.ready_seconds += rep.stopped_at - rep.ready_at
        self.replicas.remove(rep)
        del self._by_model[id(rep.model)]
        self._warm_nodes.append(self.loop.now)

    # --- traffic ----------------------------------------------------------------------

    def arrive(self, req: Request) -> None:
        self.stats.arrived += 1
        self.in_flight += 1
        self._route(req)

    def _route(self, req: Request) -> None:
        if not self.ready:
            self.pending.append(req)
            return
        self.router.pick(self.ready).submit(req)

    def drop_expired(self, timeout_s: float) -> None:
        now = self.loop.now
        for rep in self.replicas:
            if rep.state is ReplicaState.STARTING:
                continue
            for req in rep.model.drop_expired(now, timeout_s):
                self._dropped(req)
        while self.pending and now - self.pending[0].arrival > timeout_s:
            self._dropped(self.pending.popleft())

    def _dropped(self, req: Request) -> None:
        req.dropped = True
        self.stats.dropped += 1
        self._ended(req)

    # --- hooks from the replica model -------------------------------------------------

    def first_token(self, req: Request) -> None:
        self.stats.first_token(req)

    def finished(self, req: Request) -> None:
        self.stats.finished(req)
        self._ended(req)

    def rejected(self, req: Request, why: str) -> None:
        self.stats.rejected += 1
        self._ended(req)

    def idle(self, model: ReplicaModel) -> None:
        rep = self._by_model.get(id(model))
        if rep is not None and rep.state is ReplicaState.DRAINING:
            # Stop after the current call returns, not inside the model's own step.
            self.loop.after(0.0, self._stop_if_idle, rep)

    def _stop_if_idle(self, rep: SimReplica) -> None:
        if rep.stopped_at is None and rep.model.outstanding == 0:
            self._stop(rep)

    # --- observation ------------------------------------------------------------------

    def readings(self, failure_rate: float = 0.0) -> list[ReplicaReading]:
        """What scraping every replica's /metrics would return now."""
        out = []
        for rep in self.replicas:
            unreadable = rep.state is ReplicaState.STARTING or (failure_rate and self.rng.random() < failure_rate)
            figures = None if unreadable else rep.model.figures()
            out.append(ReplicaReading(rep.model.name, rep.state, rep.created_at, rep.ready_at, figures))
        return out

    def gpu_seconds(self) -> float:
        now = self.loop.now
        return self.fleet_stats.gpu_seconds + sum(now - r.created_at for r in self.replicas)

    def counts(self) -> tuple[int, int, int]:
        ready = starting = draining = 0
        for r in self.replicas:
            if r.state is ReplicaState.READY:
                ready += 1
            elif r.state is ReplicaState.STARTING:
                starting += 1
            else:
                draining += 1
        return ready, starting, draining

    def stop_all(self) -> None:
        for rep in list(self.replicas):
            self._stop(rep)
