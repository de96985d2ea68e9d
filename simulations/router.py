"""Request routers: how a Service spreads requests over ready replicas."""

from __future__ import annotations

from collections.abc import Callable

from simulations.replica import ReplicaModel


class RoundRobin:
    """Like a Kubernetes Service through kube-proxy: each ready replica in turn."""

    def __init__(self) -> None:
        self._i = 0

    def pick(self, ready: list[ReplicaModel]) -> ReplicaModel:
        self._i = (self._i + 1) % len(ready)
        return ready[self._i]


class LeastOutstanding:
    """Fewest requests waiting or running (a smarter gateway)."""

    def pick(self, ready: list[ReplicaModel]) -> ReplicaModel:
        return min(ready, key=lambda r: len(r.waiting) + len(r.running))


ROUTERS: dict[str, Callable[[], RoundRobin | LeastOutstanding]] = {
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
}
