"""The autoscaler process: every configured target's loop, plus its HTTP endpoints.

* `GET /metrics` - the autoscaler's own Prometheus metrics;
* `GET /api/v1/targets` - each target's last decision, as JSON;
* `GET /healthz` - the process is alive; `GET /readyz` - every target has completed a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time

import structlog
from aiohttp import web
from prometheus_client import generate_latest

from autoscaler.config import AutoscalerConfig, TargetConfig
from autoscaler.loop import TargetLoop
from autoscaler.metrics.scrape import ScrapeSource
from autoscaler.telemetry import Telemetry
from policies import registry

log = structlog.get_logger("qscale.service")


def build_target(cfg: TargetConfig, telemetry: Telemetry, shadow: bool) -> tuple[TargetLoop, list]:
    """Wire one target's discovery, metric source and scaler; returns the loop and start hooks."""
    starts = []
    if cfg.backend == "local":
        from autoscaler.discovery.local import LocalDiscovery
        from autoscaler.local_fleet import LocalFleet
        from autoscaler.scalers.local import LocalScaler

        assert cfg.local is not None
        fleet = LocalFleet(cfg.local)
        discovery, scaler = LocalDiscovery(fleet), LocalScaler(fleet)
        starts.append(fleet.start_service)
        initial = max(cfg.limits.min_replicas, int(cfg.params.get("min_replicas", 1)))
        starts.append(lambda: _async(fleet.scale_to, initial))
    else:
        from autoscaler.kube import kubernetes_target

        discovery, scaler, hooks = kubernetes_target(cfg)
        starts.extend(hooks)
    if cfg.metrics == "prometheus":
        from autoscaler.metrics.prometheus import PrometheusSource

        assert cfg.prometheus is not None
        source = PrometheusSource(cfg.prometheus, cfg.model_name)
    else:
        source = ScrapeSource(cfg.model_name, cfg.scrape_timeout_s)
    policy = registry.create(cfg.policy, **cfg.params)
    loop = TargetLoop(cfg.name, policy, cfg.limits, cfg.outage, discovery, source, scaler, telemetry,
                      shadow=shadow, stuck_pending_s=cfg.stuck_pending_s)
    return loop, starts


async def _async(fn, *args):
    fn(*args)


class AutoscalerService:
    def __init__(self, config: AutoscalerConfig, is_leader=None) -> None:
        self.config = config
        self.telemetry = Telemetry()
        self.loops: list[TargetLoop] = []
        self._starts: list = []
        for t in config.targets:
            loop, starts = build_target(t, self.telemetry, config.shadow)
            self.loops.append(loop)
            self._starts.extend(starts)
        self.is_leader = is_leader or (lambda: True)
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()

    # --- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/v1/targets", self._targets)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._ready)
        from autoscaler.external_metrics import add_routes

        add_routes(app, self.loops, self._labels_for)
        return app

    def _labels_for(self, loop: TargetLoop, namespace: str) -> dict[str, str] | None:
        """External-metric labels of a target, or None if it is not in `namespace`."""
        cfg = next(t for t in self.config.targets if t.name == loop.name)
        if cfg.kubernetes is not None:
            if cfg.kubernetes.namespace != namespace:
                return None
            return {"target": cfg.name, "deployment": cfg.kubernetes.deployment}
        return {"target": cfg.name}

    async def _metrics(self, request: web.Request) -> web.Response:
        self.telemetry.leader.set(1 if self.is_leader() else 0)
        return web.Response(body=generate_latest(self.telemetry.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _targets(self, request: web.Request) -> web.Response:
        out = {}
        for loop in self.loops:
            out[loop.name] = dataclasses.asdict(loop.last) if loop.last else None
        return web.json_response({"leader": self.is_leader(), "shadow": self.config.shadow, "targets": out})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _ready(self, request: web.Request) -> web.Response:
        if all(loop.ticks > 0 for loop in self.loops):
            return web.Response(text="ready")
        return web.Response(status=503, text="waiting for the first tick")

    # --- running ----------------------------------------------------------------------

    async def _run_loop(self, loop: TargetLoop) -> None:
        tick = self.config.tick_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                await loop.tick(may_write=self.is_leader())
            except Exception:  # keep going: one bad tick must not stop the target
                log.exception("tick failed", target=loop.name)
            next_at += tick
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
                delay = 0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def run(self, until: asyncio.Event | None = None) -> int:
        host, port = self.config.host_port
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        ssl_context = None
        if self.config.tls_cert_file and self.config.tls_key_file:
            import ssl

            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
        log.info("autoscaler listening", url=f"http://{host}:{port}", targets=[lp.name for lp in self.loops],
                 shadow=self.config.shadow)
        for start in self._starts:
            await start()
        aio = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                aio.add_signal_handler(sig, self._stop.set)
        if until is not None:
            asyncio.ensure_future(self._forward(until))
        try:
            await asyncio.gather(*(self._run_loop(lp) for lp in self.loops))
        finally:
            for lp in self.loops:
                await lp.close()
            await self._runner.cleanup()
        return 0

    async def _forward(self, until: asyncio.Event) -> None:
        await until.wait()
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
