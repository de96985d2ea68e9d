"""The metric-source interface: each pod's figures, None for a pod that could not be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from autoscaler.backends.base import Pod
from policies.figures import ReplicaFigures


@dataclass
class SourceResult:
    figures: dict[str, ReplicaFigures | None]
    errors: dict[str, str] = field(default_factory=dict)  # pod -> why it could not be read
    age_s: float = 0.0  # how old the data is (Prometheus scrape interval, lag)


class MetricSource(Protocol):
    async def read(self, pods: list[Pod]) -> SourceResult: ...

    async def close(self) -> None: ...
