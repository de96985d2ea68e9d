"""The scaler interface: read the replica count the workload asks for, and write a new one."""

from __future__ import annotations

from typing import Protocol


class ScaleRefused(Exception):
    """The scaler will not act (another owner, permissions): a message for the event log."""


class Scaler(Protocol):
    async def current_replicas(self) -> int: ...

    async def set_replicas(self, replicas: int, reason: str) -> None: ...

    async def close(self) -> None: ...
