"""The local backend's Service: a small proxy on a stable port, in front of the replicas.

Like a Kubernetes Service with a gateway's manners:
* round-robin over replicas in rotation (ready and healthy); while none is, a request is
  held (like Knative's activator) up to `hold_timeout_s`; held requests are the
  backend's `router_waiting`;
* a request not yet started (connection refused or reset, a replica answering 503 while
  it drains, no response headers within `header_timeout_s`) is retried on another
  replica, up to `attempts` replicas; the failed one leaves the rotation at once;
* once the response has started, a replica that fails (connection lost, or no data for
  `idle_timeout_s` once tokens flow: before the first token a wait is a queue, and a hung
  replica is found by its health probes) ends the client's stream cleanly: a server-sent-events stream gets an
  error event and its end; any other body is cut (the connection closes), never a second
  status line inside a body;
* a client that goes away cancels its upstream request, so the replica frees the slot; a
  request body not received within `body_timeout_s` gets 408.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable

import aiohttp
import structlog
from aiohttp import web

from autoscaler.local.replicas import LocalReplica

log = structlog.get_logger("qscale.local.service")

FORWARDED_HEADERS = ("content-type", "accept", "authorization")


class UpstreamNotStarted(Exception):
    """The replica failed before any response: the request may go to another one."""


class ProxyService:
    def __init__(self, serving: Callable[[], list[LocalReplica]], became_ready: asyncio.Event,
                 on_failure: Callable[[LocalReplica], None], host: str, port: int, hold_timeout_s: float,
                 header_timeout_s: float, idle_timeout_s: float, attempts: int = 3,
                 body_timeout_s: float = 30.0) -> None:
        self.serving = serving
        self.became_ready = became_ready
        self.on_failure = on_failure
        self.host, self.port = host, port
        self.hold_timeout_s = hold_timeout_s
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.attempts = attempts
        self.body_timeout_s = body_timeout_s
        self.closing = False  # set once the listener stopped: new requests get a clean 503
        self.held = 0  # requests waiting for a replica in rotation
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._rr = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # --- choosing a replica -----------------------------------------------------------

    def _pick(self, tried: set[str]) -> LocalReplica | None:
        ready = [r for r in self.serving() if r.name not in tried]
        return ready[next(self._rr) % len(ready)] if ready else None

    async def _wait_for_replica(self, tried: set[str], deadline: float) -> LocalReplica | None:
        rep = self._pick(tried)
        if rep is not None:
            return rep
        self.held += 1  # none in rotation: hold (scale from zero, or every replica failed)
        try:
            while rep is None and time.monotonic() < deadline:
                self.became_ready.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.became_ready.wait(), timeout=min(1.0, self.hold_timeout_s))
                rep = self._pick(tried)
        finally:
            self.held -= 1
        return rep

    # --- proxying ---------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=2))
        return self._session

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.closing:  # a request on a kept-alive connection after the listener stopped
            return web.json_response({"object": "error", "message": "the Service is shutting down",
                                      "type": "ServiceUnavailable", "code": 503}, status=503,
                                     headers={"Connection": "close"})
        self.in_flight += 1
        self.idle.clear()
        try:
            return await self._forward(request)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await asyncio.wait_for(request.read(), timeout=self.body_timeout_s)
        except TimeoutError:
            return web.json_response({"object": "error", "message": "request body not received in time",
                                      "type": "RequestTimeout", "code": 408}, status=408,
                                     headers={"Connection": "close"})
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        tried: set[str] = set()
        deadline = time.monotonic() + self.hold_timeout_s
        last = "no replica in rotation"
        while len(tried) < self.attempts:
            rep = await self._wait_for_replica(tried, deadline)
            if rep is None:
                break
            tried.add(rep.name)
            try:
                return await self._through(request, rep, body, headers)
            except UpstreamNotStarted as exc:
                last = f"{rep.name}: {exc}"
                self.on_failure(rep)
                log.info("request retried on another replica", replica=rep.name, why=str(exc))
        return web.json_response({"object": "error", "message": f"no replica could take the request ({last})",
                                  "type": "ServiceUnavailable", "code": 503}, status=503)

    async def _through(self, request: web.Request, rep: LocalReplica, body: bytes,
                       headers: dict[str, str]) -> web.StreamResponse:
        url = f"{rep.url}{request.rel_url}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=self.header_timeout_s)
        try:
            cm = self._client().request(request.method, url, data=body, headers=headers, timeout=timeout)
            upstream = await cm.__aenter__()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamNotStarted(type(exc).__name__) from None
        try:
            if upstream.status == 503:
                raise UpstreamNotStarted("503 (draining or overloaded)")
            return await self._relay(request, rep, upstream)
        finally:
            await cm.__aexit__(None, None, None)

    async def _relay(self, request: web.Request, rep: LocalReplica,
                     upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status)
        ctype = upstream.headers.get("Content-Type", "")
        if ctype:
            resp.headers["Content-Type"] = ctype
        await resp.prepare(request)
        started = False  # before the first token a long wait is a queue, not a failure
        while True:
            try:
                wait = self.idle_timeout_s if started else None
                chunk = await asyncio.wait_for(upstream.content.readany(), timeout=wait)
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"no data for {self.idle_timeout_s:.0f}s" if isinstance(exc, TimeoutError) else type(exc).__name__
                self.on_failure(rep)
                log.warning("upstream failed mid-response", replica=rep.name, why=why)
                return await self._end_cut(request, resp, ctype, f"replica {rep.name} failed mid-response ({why})")
            started = started or b"data:" in chunk or not ctype.startswith("text/event-stream")
            try:
                await (resp.write(chunk) if chunk else resp.write_eof())
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                return resp  # the client went away: leaving cancels the upstream request too
            if not chunk:
                return resp

    @staticmethod
    async def _end_cut(request: web.Request, resp: web.StreamResponse, ctype: str, message: str) -> web.StreamResponse:
        """End a response whose replica failed: an SSE stream gets an error event and its end
        (no `[DONE]`, so a client knows it is incomplete); any other body is cut."""
        if ctype.startswith("text/event-stream"):
            error = {"error": {"message": message, "type": "UpstreamError", "code": 502}}
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write(f"data: {json.dumps(error)}\n\n".encode())
                await resp.write_eof()
            return resp
        if request.transport is not None:
            request.transport.close()  # a cut body: the client sees it incomplete
        return resp

    # --- the listener -----------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/v1/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        log.info("service listening", url=f"http://{self.host}:{self.port}")

    async def stop_listening(self) -> None:
        """New connections are refused from now on, new requests on open connections get 503;
        requests already in flight go on."""
        self.closing = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
