"""The local backend's fleet: `qscale serve` processes on this machine, plus a Service.

Each replica is a child process (`qscale serve --engine emulated ...`, or real vLLM) on
its own loopback port. It is STARTING until /health answers, READY after, DRAINING once
it has been sent SIGTERM (it finishes in-flight work, then exits). The Service is a small
round-robin proxy on a stable port, like a Kubernetes Service: clients send to it, it
forwards to ready replicas, and holds requests (like Knative's activator) while none is
ready; those held requests are reported as `router_waiting`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.discovery.base import Pod
from policies import ReplicaState
from simulations.victims import removal_order

log = structlog.get_logger("qscale.local")


class LocalFleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str = Field("emulated", pattern="^(emulated|vllm-cpu)$")
    profile: str = "llama3-8b-h100"
    model_name: str = "emulated/llama3-8b-h100"
    cold_start_s: float = Field(10.0, ge=0)
    drain_grace_s: float = Field(30.0, ge=0)
    host: str = "127.0.0.1"
    service_port: int = Field(8600, gt=0, lt=65536)
    base_port: int = Field(8610, gt=0, lt=65536)
    max_num_seqs: int | None = Field(None, gt=0)
    extra_args: list[str] = []
    hold_timeout_s: float = Field(120.0, gt=0, description="how long the Service holds a request with no ready replica")


@dataclass
class LocalReplica:
    name: str
    port: int
    proc: subprocess.Popen
    started_at: float
    state: ReplicaState = ReplicaState.STARTING
    ready_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalFleet:
    def __init__(self, config: LocalFleetConfig) -> None:
        self.config = config
        self.replicas: list[LocalReplica] = []
        self._ids = itertools.count(1)
        self._rr = itertools.count()
        self._held = 0
        self._ready_event = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # --- processes --------------------------------------------------------------------

    def _free_port(self) -> int:
        used = {r.port for r in self.replicas}
        port = self.config.base_port
        while port in used:
            port += 1
        return port

    def _command(self, port: int) -> list[str]:
        c = self.config
        cmd = [sys.executable, "-m", "qscale.cli", "serve", "--engine", c.engine, "--host", "127.0.0.1",
               "--port", str(port), "--model-name", c.model_name]
        if c.engine == "emulated":
            cmd += ["--profile", c.profile, "--cold-start", str(c.cold_start_s), "--drain-grace", str(c.drain_grace_s)]
            if c.max_num_seqs:
                cmd += ["--max-num-seqs", str(c.max_num_seqs)]
        else:
            cmd += ["--tiny"]
        return cmd + list(c.extra_args)

    def start_one(self) -> LocalReplica:
        port = self._free_port()
        name = f"replica-{next(self._ids)}"
        env = {**os.environ, "QSCALE_LOG_FORMAT": "json"}
        proc = subprocess.Popen(self._command(port), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        rep = LocalReplica(name, port, proc, time.time())
        self.replicas.append(rep)
        log.info("replica started", replica=name, port=port, pid=proc.pid)
        return rep

    def stop_one(self, rep: LocalReplica) -> None:
        if rep.state is ReplicaState.STARTING:
            rep.proc.kill()  # nothing to drain yet
        else:
            rep.proc.send_signal(signal.SIGTERM)
        rep.state = ReplicaState.DRAINING
        log.info("replica draining", replica=rep.name, port=rep.port)

    @property
    def desired(self) -> int:
        return sum(1 for r in self.replicas if r.state is not ReplicaState.DRAINING)

    def scale_to(self, n: int) -> None:
        current = self.desired
        for _ in range(n - current):
            self.start_one()
        if n < current:
            for rep in removal_order(self.replicas, lambda r: r.started_at)[: current - n]:
                self.stop_one(rep)

    async def refresh(self) -> None:
        """Probe starting replicas, reap exited ones."""
        session = self._client()
        for rep in list(self.replicas):
            if rep.proc.poll() is not None:
                if rep.state is not ReplicaState.DRAINING:
                    log.warning("replica exited", replica=rep.name, code=rep.proc.returncode)
                self.replicas.remove(rep)
                continue
            if rep.state is ReplicaState.STARTING:
                try:
                    async with session.get(f"{rep.url}/health", timeout=aiohttp.ClientTimeout(total=0.5)) as r:
                        if r.status == 200:
                            rep.state = ReplicaState.READY
                            rep.ready_at = time.time()
                            self._ready_event.set()
                            log.info("replica ready", replica=rep.name, cold_start_s=round(rep.ready_at - rep.started_at, 1))
                except (TimeoutError, aiohttp.ClientError):
                    pass

    def pods(self) -> list[Pod]:
        return [
            Pod(r.name, r.state, r.started_at,
                f"{r.url}/metrics" if r.state is not ReplicaState.STARTING else None, r.ready_at)
            for r in self.replicas
        ]

    @property
    def held_requests(self) -> int:
        return self._held

    # --- the Service ------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=2))
        return self._session

    def _pick(self) -> LocalReplica | None:
        ready = [r for r in self.replicas if r.state is ReplicaState.READY]
        if not ready:
            return None
        return ready[next(self._rr) % len(ready)]

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        rep = self._pick()
        if rep is None:
            # No ready replica: hold the request until one is (scale from zero).
            self._held += 1
            deadline = time.monotonic() + self.config.hold_timeout_s
            try:
                while rep is None and time.monotonic() < deadline:
                    self._ready_event.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._ready_event.wait(), timeout=1.0)
                    rep = self._pick()
            finally:
                self._held -= 1
            if rep is None:
                return web.json_response({"object": "error", "message": "no ready replica", "code": 503}, status=503)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept", "authorization")}
        try:
            async with self._client().request(request.method, f"{rep.url}{request.rel_url}", data=body,
                                              headers=headers) as upstream:
                resp = web.StreamResponse(status=upstream.status)
                ctype = upstream.headers.get("Content-Type")
                if ctype:
                    resp.headers["Content-Type"] = ctype
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except aiohttp.ClientError as exc:
            return web.json_response({"object": "error", "message": f"upstream {rep.name}: {type(exc).__name__}",
                                      "code": 502}, status=502)

    async def start_service(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.host, self.config.service_port).start()
        log.info("service listening", url=f"http://{self.config.host}:{self.config.service_port}")

    async def close(self) -> None:
        for rep in self.replicas:
            if rep.proc.poll() is None:
                rep.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for rep in self.replicas:
            while rep.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if rep.proc.poll() is None:
                rep.proc.kill()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
