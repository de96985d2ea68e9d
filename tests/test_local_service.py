"""The local backend's Service (`autoscaler/local/proxy.py`) in front of small fake replicas:
retries a request not yet started, ends a broken stream cleanly, and takes failed replicas
out of the rotation."""

from __future__ import annotations

import asyncio
import subprocess
import time

import aiohttp
from aiohttp import web

from autoscaler.local.proxy import ProxyService
from autoscaler.local.replicas import LocalReplica
from policies import ReplicaState
from tests.servers import free_port

SSE = "text/event-stream"


def _chunk(i: int) -> bytes:
    return f'data: {{"choices":[{{"text":" t{i}","finish_reason":null}}]}}\n\n'.encode()


async def _good(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": SSE})
    await resp.prepare(request)
    for i in range(3):
        await resp.write(_chunk(i))
    await resp.write(b'data: {"choices":[{"text":"","finish_reason":"length"}]}\n\ndata: [DONE]\n\n')
    await resp.write_eof()
    return resp


async def _dies_mid_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": SSE})
    await resp.prepare(request)
    await resp.write(_chunk(0))
    await asyncio.sleep(0.05)
    request.transport.close()  # the replica process died
    return resp


async def _draining(request: web.Request) -> web.Response:
    return web.json_response({"object": "error", "message": "draining", "code": 503}, status=503)


class _Fake:
    """A fake replica on its own port; `handler` answers /v1/completions."""

    def __init__(self, name: str, handler) -> None:
        self.name, self.handler, self.port = name, handler, free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def replica(self) -> LocalReplica:
        proc = subprocess.Popen(["true"])
        proc.wait()
        return LocalReplica(self.name, self.port, proc, time.time(), ReplicaState.READY, time.time())


async def _through_service(fakes: list[_Fake], listening: set[str] | None = None) -> tuple[int, bytes, list[str]]:
    """One streamed request through a Service over `fakes` (only those in `listening` started)."""
    for f in fakes:
        if listening is None or f.name in listening:
            await f.start()
    replicas = [f.replica() for f in fakes]
    failed: list[str] = []
    svc = ProxyService(lambda: [r for r in replicas if r.name not in failed], asyncio.Event(),
                       lambda r: failed.append(r.name), "127.0.0.1", free_port(), hold_timeout_s=2,
                       header_timeout_s=5, idle_timeout_s=5)
    svc._rr = iter(range(10**6))  # deterministic: the first replica first
    await svc.start()
    try:
        async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{svc.port}/v1/completions",
                                                        json={"prompt": "hi", "stream": True}) as r:
            body = await r.read()
            return r.status, body, failed
    finally:
        await svc.close()
        for f in fakes:
            if f.runner is not None:
                await f.runner.cleanup()


def test_a_request_not_yet_started_is_retried_on_another_replica():
    """A replica that refuses the connection (it died) or answers 503 (it drains) has not started
    the request: the client gets its answer from the next replica, and never sees the failure."""
    status, body, failed = asyncio.run(_through_service([_Fake("dead", _good), _Fake("b", _good)],
                                                        listening={"b"}))
    assert status == 200 and body.endswith(b"data: [DONE]\n\n") and failed == ["dead"]
    status, body, failed = asyncio.run(_through_service([_Fake("drains", _draining), _Fake("b", _good)]))
    assert status == 200 and body.endswith(b"data: [DONE]\n\n") and failed == ["drains"]


def test_a_replica_that_dies_mid_stream_ends_the_stream_cleanly():
    """One status line (200), the tokens sent so far, an SSE error event, and the stream's end:
    no `[DONE]` (the client can tell it is incomplete) and no 502 status line inside the body."""
    status, body, failed = asyncio.run(_through_service([_Fake("dies", _dies_mid_stream)]))
    assert status == 200 and failed == ["dies"]
    assert body.startswith(_chunk(0)) and b"[DONE]" not in body and b"HTTP/1.1" not in body
    assert b'"type": "UpstreamError"' in body and body.endswith(b"\n\n")


def test_every_replica_failing_gives_one_503_after_the_retries():
    status, body, failed = asyncio.run(_through_service([_Fake("a", _draining), _Fake("b", _draining)]))
    assert status == 503 and b"no replica could take the request" in body and sorted(failed) == ["a", "b"]
