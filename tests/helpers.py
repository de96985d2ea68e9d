"""Helpers that build signals through the real `SignalsBuilder`, as the simulator and live loop do."""

from __future__ import annotations

from dataclasses import dataclass, field

from policies import ReplicaReading, ReplicaState, Signals, SignalsBuilder
from policies.figures import ReplicaFigures

READY, STARTING, DRAINING = ReplicaState.READY, ReplicaState.STARTING, ReplicaState.DRAINING


def reading(name: str, state: ReplicaState = READY, started_at: float = 0.0, ready_at: float | None = None,
            scraped: bool = True, **figures: float) -> ReplicaReading:
    """A replica's reading; `scraped=False`: it could not be read."""
    return ReplicaReading(name, state, started_at, ready_at, ReplicaFigures(**figures) if scraped else None)


def ready(name: str, waiting: float = 0, running: float = 0, finished: float = 0, **kw) -> ReplicaReading:
    return reading(name, READY, kw.pop("started_at", 0.0), waiting=waiting, running=running,
                   requests_finished=finished, **kw)


def starting(name: str, started_at: float = 0.0) -> ReplicaReading:
    return reading(name, STARTING, started_at, scraped=False)


def missing(name: str) -> ReplicaReading:
    return reading(name, READY, 0.0, scraped=False)


@dataclass
class Feed:
    """Builds successive Signals for one policy run."""

    builder: SignalsBuilder = field(default_factory=SignalsBuilder)

    def __call__(self, time: float, readings: list[ReplicaReading], current: int | None = None,
                 data_age_s: float = 0.0) -> Signals:
        if current is None:
            current = sum(1 for r in readings if r.state is not DRAINING)
        return self.builder.build(time, readings, current, data_age_s=data_age_s)


def signals(time: float, readings: list[ReplicaReading], current: int | None = None) -> Signals:
    return Feed()(time, readings, current)


class StubBackend:
    """A backend for service tests: `current` replicas; `pods()` fails while `broken` is set
    (so a test's own decision stays the last one), else one starting pod."""

    def __init__(self, current: int = 1, broken: bool = True) -> None:
        self.current, self.broken = current, broken

    async def start(self) -> None:
        return None

    async def pods(self) -> list:
        from autoscaler.backends.base import Pod

        if self.broken:
            raise ConnectionError("backend unreachable")
        return [Pod("a", ReplicaState.STARTING, 0.0, None)]

    async def current_replicas(self) -> int:
        return self.current

    async def set_replicas(self, replicas, reason, remove_first=()) -> None:
        return None

    def router_waiting(self) -> float:
        return 0.0

    async def close(self) -> None:
        return None
