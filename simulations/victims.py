"""Which replicas go first on a scale-down: a ReplicaSet's choice, for every fleet.

Replicas not yet ready go first (the newest of them first), then ready ones, the most
recently ready first; draining ones are already leaving. Used by the simulated fleet and
by the local backend, so both remove the same replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from policies import ReplicaState

R = TypeVar("R")


def removal_order(replicas: Iterable[R], created_at: Callable[[R], float]) -> list[R]:
    def key(r) -> tuple[bool, float]:
        ready = r.state is ReplicaState.READY
        return ready, -((r.ready_at or created_at(r)) if ready else created_at(r))

    return sorted((r for r in replicas if r.state is not ReplicaState.DRAINING), key=key)
