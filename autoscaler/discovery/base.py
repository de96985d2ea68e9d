"""What discovery yields: the target's pods with their state and where to scrape them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from policies import ReplicaState


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    state: ReplicaState
    started_at: float  # epoch seconds (creation)
    metrics_url: str | None  # None while nothing listens yet
    ready_at: float | None = None


class Discovery(Protocol):
    async def pods(self) -> list[Pod]: ...
