"""Which replicas go first on a scale-down: a ReplicaSet's choice, unhealthy ones first.

Replicas that could not be read (or that the backend found hung) go first, then those not
yet ready (the newest first), then ready ones, the most recently ready first; draining
ones are already leaving. Used by the simulated fleet and by the local backend, so both
remove the same replicas; the Kubernetes backend tells its ReplicaSet the same through
the pod-deletion-cost annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import TypeVar

from policies.signals import ReplicaState

R = TypeVar("R")


def removal_order(replicas: Iterable[R], created_at: Callable[[R], float], name: Callable[[R], str] = lambda r: "",
                  unhealthy: Collection[str] = ()) -> list[R]:
    def key(r) -> tuple[bool, bool, float]:
        ready = r.state is ReplicaState.READY
        return name(r) not in unhealthy, ready, -((r.ready_at or created_at(r)) if ready else created_at(r))

    return sorted((r for r in replicas if r.state is not ReplicaState.DRAINING), key=key)
