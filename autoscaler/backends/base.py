"""The backend interface: what the control loop needs from wherever the replicas run.

One file per backend (`local.py`, `kubernetes.py`), each owning its config model, as
KEDA keeps one file per scaler. The loop only ever talks to this interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from policies import ReplicaState


class ScaleRefused(Exception):
    """The backend will not act (another owner, permissions): a message for the event log."""


@dataclass(frozen=True, slots=True)
class Pod:
    """One replica as the backend sees it, and where to read its metrics."""

    name: str
    state: ReplicaState
    started_at: float  # epoch seconds (creation)
    metrics_url: str | None  # None while nothing listens yet
    ready_at: float | None = None


class Backend(Protocol):
    async def start(self) -> None:
        """Start watching (and, for the local backend, serving) before the first tick."""

    async def pods(self) -> list[Pod]:
        """The target's replicas now, with their state."""

    async def current_replicas(self) -> int:
        """The replica count the workload asks for now (a Deployment's spec.replicas)."""

    async def set_replicas(self, replicas: int, reason: str, remove_first: Sequence[str] = ()) -> None:
        """Ask for `replicas`. On a scale-down, the replicas named in `remove_first` (unreadable,
        unready or hung ones, best first) go before any healthy one. Raises ScaleRefused."""

    def router_waiting(self) -> float:
        """Requests held in front of every replica (the local Service's hold queue); 0 if none."""

    async def close(self) -> None:
        """Stop watching; the local backend also drains and stops its replicas."""
