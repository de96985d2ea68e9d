"""The metric-source interface: per-pod snapshots, None for a pod that could not be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from autoscaler.discovery.base import Pod
from autoscaler.metrics.parse import VllmSnapshot


@dataclass
class SourceResult:
    snapshots: dict[str, VllmSnapshot | None]
    errors: dict[str, str] = field(default_factory=dict)  # pod -> why it could not be read
    age_s: float = 0.0  # how old the data is (Prometheus scrape interval, lag)


class MetricSource(Protocol):
    async def read(self, pods: list[Pod]) -> SourceResult: ...

    async def close(self) -> None: ...
