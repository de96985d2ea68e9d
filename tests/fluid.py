"""A tiny fluid fleet for policy tests: arrivals in, service at a fixed rate, cold starts.

It exists only to close the loop in unit tests (the simulator in `simulations/`
is the real model); its readings go through the real `SignalsBuilder`.
Arrivals are split evenly over ready replicas and stay where they land.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from policies import Policy, ReplicaReading, ReplicaState, Signals, SignalsBuilder


@dataclass
class FluidReplica:
    name: str
    started_at: float
    in_system: float = 0.0
    finished: float = 0.0


@dataclass
class FluidFleet:
    rate: Callable[[float], float]  # arrivals per second at time t
    cold_start_s: float = 120.0
    service_s: float = 8.0  # each running request takes this long
    slots: int = 32  # max_num_seqs per replica
    tick_s: float = 2.0
    replicas: list[FluidReplica] = field(default_factory=list)
    router_waiting: float = 0.0
    builder: SignalsBuilder = field(default_factory=SignalsBuilder)
    _n: int = 0

    def start(self, count: int, now: float, warm: bool = False) -> None:
        for _ in range(count):
            self._n += 1
            started = now - self.cold_start_s if warm else now
            self.replicas.append(FluidReplica(f"r{self._n}", started))

    def ready(self, now: float) -> list[FluidReplica]:
        return [r for r in self.replicas if now - r.started_at >= self.cold_start_s]

    def step(self, now: float) -> None:
        ready = self.ready(now)
        self.router_waiting += self.rate(now) * self.tick_s
        if not ready:
            return
        share = self.router_waiting / len(ready)
        self.router_waiting = 0.0
        for r in ready:
            r.in_system += share
            running = min(r.in_system, self.slots)
            done = running / self.service_s * self.tick_s
            r.in_system -= done
            r.finished += done

    def signals(self, now: float, current: int) -> Signals:
        readings = []
        for r in self.replicas:
            if now - r.started_at >= self.cold_start_s:
                running = min(r.in_system, self.slots)
                readings.append(ReplicaReading(
                    r.name, ReplicaState.READY, r.started_at, ready_at=r.started_at + self.cold_start_s,
                    waiting=r.in_system - running, running=running, requests_finished=r.finished))
            else:
                readings.append(ReplicaReading(r.name, ReplicaState.STARTING, r.started_at, scraped=False))
        return self.builder.build(now, readings, current, router_waiting=self.router_waiting)

    def resize(self, desired: int, now: float) -> None:
        if desired > len(self.replicas):
            self.start(desired - len(self.replicas), now)
        elif desired < len(self.replicas):
            # Remove the youngest first (starting ones before ready ones); a removed
            # replica's queue goes back to the router, as clients retry.
            self.replicas.sort(key=lambda r: r.started_at)
            for r in self.replicas[desired:]:
                self.router_waiting += r.in_system
            del self.replicas[desired:]


def run(policy: Policy, fleet: FluidFleet, until: float, initial: int) -> list[tuple[float, Signals, int]]:
    """Closed loop: decide every tick, resize the fleet, step it. Returns (t, signals, desired)."""
    fleet.start(initial, 0.0, warm=True)
    trace = []
    t = 0.0
    while t < until:
        s = fleet.signals(t, len(fleet.replicas))
        desired = policy.decide(s).desired_replicas
        fleet.resize(desired, t)
        trace.append((t, s, desired))
        fleet.step(t)
        t += fleet.tick_s
    return trace
