"""A loop whose ticks fail is counted, shown, and makes /healthz fail; it recovers when they succeed."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from autoscaler.config import AutoscalerConfig
from autoscaler.service import AutoscalerService
from tests.helpers import StubBackend
from tests.servers import free_port


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as r:
        return r.status, await r.text()


async def _scenario(port: int) -> dict:
    cfg = AutoscalerConfig(listen=f"127.0.0.1:{port}", tick_s=0.2, unhealthy_after_ticks=3,
                           targets=[{"name": "demo", "policy": "static", "params": {"replicas": 1},
                                     "local": {"service_port": free_port(), "base_port": free_port()}}])
    service = AutoscalerService(cfg)
    backend = StubBackend(current=1)  # fails every pods() while broken
    service.loops[0].backend = backend
    stop = asyncio.Event()
    task = asyncio.ensure_future(service.run(until=stop))
    base = f"http://127.0.0.1:{port}"
    out = {}
    async with aiohttp.ClientSession() as s:
        await asyncio.sleep(1.5)
        out["health_broken"] = await _get(s, f"{base}/healthz")
        out["metrics"] = (await _get(s, f"{base}/metrics"))[1]
        out["targets_broken"] = json.loads((await _get(s, f"{base}/api/v1/targets"))[1])["targets"]["demo"]
        backend.broken = False
        await asyncio.sleep(1.0)
        out["health_fixed"] = await _get(s, f"{base}/healthz")
    stop.set()
    await task
    return out


def test_failed_ticks_are_counted_shown_and_fail_healthz_until_ticks_complete_again():
    out = asyncio.run(_scenario(free_port()))
    status, text = out["health_broken"]
    assert status == 503 and "demo: no tick completed" in text and "backend unreachable" in text
    failures = [line for line in out["metrics"].splitlines() if line.startswith("qscale_tick_failures_total")]
    assert failures and float(failures[0].rsplit(" ", 1)[1]) >= 5, failures
    t = out["targets_broken"]
    assert t["failed_ticks"] >= 5 and t["ticks"] == 0 and "backend unreachable" in t["last_error"]
    assert out["health_fixed"][0] == 200
