"""Local discovery: the processes the local backend started."""

from __future__ import annotations

from autoscaler.discovery.base import Pod
from autoscaler.local_fleet import LocalFleet


class LocalDiscovery:
    def __init__(self, fleet: LocalFleet) -> None:
        self.fleet = fleet

    async def pods(self) -> list[Pod]:
        await self.fleet.refresh()
        return self.fleet.pods()

    def router_waiting(self) -> float:
        return float(self.fleet.held_requests)
