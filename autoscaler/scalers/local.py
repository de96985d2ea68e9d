"""Local scaler: starts `qscale serve` processes, and drains before stopping them."""

from __future__ import annotations

from autoscaler.local_fleet import LocalFleet


class LocalScaler:
    def __init__(self, fleet: LocalFleet) -> None:
        self.fleet = fleet

    async def current_replicas(self) -> int:
        return self.fleet.desired

    async def set_replicas(self, replicas: int, reason: str) -> None:
        self.fleet.scale_to(replicas)

    async def close(self) -> None:
        await self.fleet.close()
