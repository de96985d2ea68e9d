"""The autoscaler process: every configured target's loop, plus its HTTP endpoints.

* `GET /metrics` - the autoscaler's own Prometheus metrics;
* `GET /api/v1/targets` - each target's last decision, as JSON; `GET /api/v1/targets/{name}`
  one target's (what KEDA's metrics-api scaler reads: `valueLocation: desired`);
* `GET /healthz` - the process is alive; `GET /readyz` - every target has completed a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

import structlog
from aiohttp import web
from prometheus_client import generate_latest

from autoscaler.backends.base import Backend
from autoscaler.config import AutoscalerConfig, TargetConfig
from autoscaler.loop import TargetLoop
from autoscaler.metrics.base import MetricSource
from autoscaler.metrics.scrape import ScrapeSource
from autoscaler.telemetry import Telemetry
from policies import registry

log = structlog.get_logger("qscale.service")


def _local_backend(cfg: TargetConfig, identity: str | None) -> Backend:
    from autoscaler.backends.local import LocalBackend

    assert cfg.local is not None
    initial = max(cfg.limits.min_replicas, int(cfg.params.get("min_replicas", 1)))
    return LocalBackend(cfg.local, initial)


def _kubernetes_backend(cfg: TargetConfig, identity: str | None) -> Backend:
    from autoscaler.backends.kubernetes import KubernetesBackend

    assert cfg.kubernetes is not None
    return KubernetesBackend.from_config(cfg.kubernetes, identity)


BACKENDS: dict[str, Callable[[TargetConfig, str | None], Backend]] = {
    "local": _local_backend, "kubernetes": _kubernetes_backend,
}


def _source(cfg: TargetConfig) -> MetricSource:
    if cfg.metrics == "prometheus":
        from autoscaler.metrics.prometheus import PrometheusSource

        assert cfg.prometheus is not None
        return PrometheusSource(cfg.prometheus, cfg.model_name)
    return ScrapeSource(cfg.model_name, cfg.scrape_timeout_s)


def build_target(cfg: TargetConfig, telemetry: Telemetry, shadow: bool, identity: str | None = None) -> TargetLoop:
    """Wire one target's backend, metric source and policy into its loop."""
    backend = BACKENDS[cfg.backend](cfg, identity)
    policy = registry.create(cfg.policy, **cfg.params)
    return TargetLoop(cfg.name, policy, cfg.limits, cfg.outage, backend, _source(cfg), telemetry,
                      shadow=shadow, stuck_pending_s=cfg.stuck_pending_s)


class AutoscalerService:
    def __init__(self, config: AutoscalerConfig, is_leader=None) -> None:
        self.config = config
        self.telemetry = Telemetry()
        self.loops = [build_target(t, self.telemetry, config.shadow, config.identity) for t in config.targets]
        self.is_leader = is_leader or (lambda: True)
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._started: float | None = None  # monotonic, when the loops began
        # A tick that takes longer than this is abandoned and counted as failed.
        self.tick_timeout_s = max(10.0, 5 * config.tick_s)

    # --- HTTP -------------------------------------------------------------------------

    def app(self, middlewares: tuple = ()) -> web.Application:
        """The HTTP API; `middlewares`: who may call it (autoscaler.apiauth)."""
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/v1/targets", self._targets)
        app.router.add_get("/api/v1/targets/{name}", self._target)
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
        out = {loop.name: _view(loop) for loop in self.loops}
        return web.json_response({"leader": self.is_leader(), "shadow": self.config.shadow, "targets": out})

    async def _target(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        loop = next((lp for lp in self.loops if lp.name == name), None)
        if loop is None:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                                      "reason": "NotFound", "message": f"no target {name!r}"}, status=404)
        return web.json_response({"name": name, "leader": self.is_leader(), "shadow": self.config.shadow,
                                  **_view(loop)})

    async def _healthz(self, request: web.Request) -> web.Response:
        """Unhealthy (503) when a target's loop has not completed a tick for `unhealthy_after_ticks`
        ticks (frozen, or failing every tick), so a liveness probe restarts the process.
        /healthz is open to anyone: a tick's error (backend messages, URLs) is shown only where
        everything is (authentication: none); otherwise it is in the authorized /api/v1/targets."""
        limit = self.config.unhealthy_after_ticks * self.config.tick_s
        show_errors = self.config.auth_mode == "none"
        now = time.monotonic()
        stalled = []
        for lp in self.loops:
            since = lp.last_tick_monotonic if lp.last_tick_monotonic is not None else self._started
            if since is not None and now - since > limit:
                why = f" ({lp.last_error or 'no error'})" if show_errors else " (its last error: /api/v1/targets)"
                stalled.append(f"{lp.name}: no tick completed for {now - since:.0f}s{why}")
        if stalled:
            return web.Response(status=503, text="\n".join(stalled))
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
                await asyncio.wait_for(loop.tick(may_write=self.is_leader()), timeout=self.tick_timeout_s)
            except Exception as exc:  # keep going: one bad tick must not stop the target
                loop.tick_failed(exc)
            next_at += tick
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
                delay = 0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def run(self, until: asyncio.Event | None = None) -> int:
        from autoscaler.apiauth.setup import api_security

        host, port = self.config.host_port
        security = await asyncio.to_thread(api_security, self.config)
        self._runner = web.AppRunner(self.app(security.middlewares), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=security.ssl_context).start()
        background = [asyncio.ensure_future(job()) for job in security.background]
        log.info("autoscaler listening", url=f"{security.scheme}://{host}:{port}",
                 targets=[lp.name for lp in self.loops], shadow=self.config.shadow,
                 authentication=self.config.auth_mode)
        aio = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                aio.add_signal_handler(sig, self._stop.set)
        if until is not None:
            asyncio.ensure_future(self._forward(until))
        try:
            for lp in self.loops:
                await lp.backend.start()
            self._started = time.monotonic()
            await asyncio.gather(*(self._run_loop(lp) for lp in self.loops))
        finally:
            # Graceful: every backend drains at once (the local Service lets requests in flight finish).
            log.info("shutting down: draining", targets=[lp.name for lp in self.loops])
            await asyncio.gather(*(lp.close() for lp in self.loops), return_exceptions=True)
            for job in background:
                job.cancel()
            await self._runner.cleanup()
            security.close()
        return 0

    async def _forward(self, until: asyncio.Event) -> None:
        await until.wait()
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()


def _view(loop: TargetLoop) -> dict:
    """A target's last decision and its loop's health, as the targets API shows it."""
    view = loop.last.view() if loop.last else {}
    view.update(ticks=loop.ticks, failed_ticks=loop.failed_ticks, last_error=loop.last_error)
    return view
