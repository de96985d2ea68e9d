"""The replica model's clock on the wall: asyncio's loop time, seconds since start."""

from __future__ import annotations

import asyncio
from typing import Any


class AsyncioClock:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.origin = self.loop.time()

    @property
    def now(self) -> float:
        return self.loop.time() - self.origin

    def at(self, time: float, fn: Any, *args: Any) -> asyncio.TimerHandle:
        return self.loop.call_at(self.origin + time, fn, *args)

    @staticmethod
    def cancel(handle: asyncio.TimerHandle) -> None:
        handle.cancel()
