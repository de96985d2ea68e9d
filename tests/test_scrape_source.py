"""The direct scrape reads a whole /metrics body, chunk by chunk, or reports the pod unreadable."""

from __future__ import annotations

import asyncio

from aiohttp import web

from autoscaler.backends.base import Pod
from autoscaler.metrics.scrape import ScrapeSource
from policies import ReplicaState
from tests.servers import free_port


async def _serve(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def _read(handler, timeout_s: float = 1.5):
    async def go():
        runner, port = await _serve(handler)
        source = ScrapeSource(timeout_s=timeout_s)
        try:
            pod = Pod("a", ReplicaState.READY, 0.0, f"http://127.0.0.1:{port}/metrics")
            return await source.read([pod])
        finally:
            await source.close()
            await runner.cleanup()

    return asyncio.run(go())


async def _chunked(request: web.Request) -> web.StreamResponse:
    """An exposition sent in many small chunks, with pauses (the real server may do so)."""
    resp = web.StreamResponse()
    resp.content_type = "text/plain"
    await resp.prepare(request)
    for line in ["# TYPE vllm:num_requests_waiting gauge\n", "vllm:num_requests_waiting 1", "2\n",
                 "vllm:num_requests_running 3\n"]:
        await resp.write(line.encode())
        await asyncio.sleep(0.02)
    await resp.write_eof()
    return resp


async def _cut(request: web.Request) -> web.StreamResponse:
    """Headers, half a body, then the connection drops."""
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"vllm:num_requests_waiting 12\nvllm:num_requests_run")
    await asyncio.sleep(0.05)
    request.transport.close()
    return resp


def test_a_chunked_body_is_read_to_its_end():
    """The first chunk alone said waiting = 1 where the server said 12."""
    got = _read(_chunked)
    assert got.errors == {}
    assert got.figures["a"].waiting == 12 and got.figures["a"].running == 3


def test_a_body_cut_short_makes_the_pod_unreadable():
    got = _read(_cut)
    assert got.figures["a"] is None and "a" in got.errors
