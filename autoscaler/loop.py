"""One target's control loop: discover, read, decide (the shared control step), act, explain.

Every tick (default 2 s): list the replicas through the backend, read their metrics, run
`Controller.step` (the one `SignalsBuilder`, the policy, the outage rules and the one
`clamp`, as in the simulator), then write the result through the backend, unless in
shadow mode or not the leader. Each decision is logged as one structlog event with its
inputs, terms, clamps and result. A tick that fails is counted, kept in `last_error`,
and the next tick starts afresh: nothing a tick read is kept unless the tick completed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from autoscaler.backends.base import Backend, Pod, ScaleRefused
from autoscaler.metrics.base import MetricSource, SourceResult
from autoscaler.telemetry import Telemetry
from policies import Policy, ReplicaReading, ReplicaState, ScaleLimits, Signals
from policies.control import Controller, ControlOutcome, OutageRules

log = structlog.get_logger("qscale.loop")


@dataclass
class LastDecision:
    time: float
    current: int
    desired: int
    requested: int
    reason: str
    applied: bool
    shadow: bool
    clamps: list[str]
    guard: str | None
    terms: dict[str, float]
    signals: Signals
    scrape_errors: dict[str, str]
    stuck_pending: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def missing(self) -> list[str]:
        return list(self.signals.missing)

    def view(self) -> dict[str, Any]:
        """The JSON shape of /api/v1/targets and of the decision log."""
        s = self.signals
        return {
            "time": self.time, "current": self.current, "desired": self.desired, "requested": self.requested,
            "reason": self.reason, "applied": self.applied, "shadow": self.shadow, "clamps": self.clamps,
            "guard": self.guard, "terms": self.terms, "signals": summary(s), "missing": self.missing,
            "scrape_errors": self.scrape_errors, "stuck_pending": self.stuck_pending, "error": self.error,
        }


def summary(s: Signals) -> dict[str, Any]:
    """The fleet view users ask for: why it scaled."""
    return {
        "ready": s.ready_replicas, "starting": s.starting_replicas, "draining": s.draining_replicas,
        "waiting": s.total_waiting, "running": s.total_running, "arrival_rate": s.arrival_rate,
        "kv_cache_usage": round(s.mean_kv_cache_usage, 4), "ttft_s": s.mean_ttft_s,
        "generation_tokens_per_s": s.generation_tokens_per_s, "prefix_cache_hit_rate": s.prefix_cache_hit_rate,
        "queue_wait_s": s.mean_queue_wait_s, "complete": s.complete,
    }


def _rejected(readings: tuple[str, ...]) -> dict[str, str]:
    """`name: field=value` readings the builder refused, as scrape errors (one clear line each)."""
    out: dict[str, str] = {}
    for item in readings:
        name, _, why = item.partition(": ")
        out[name] = f"rejected reading: {why}"
    return out


def readings_for(pods: list[Pod], result: SourceResult) -> list[ReplicaReading]:
    return [ReplicaReading(p.name, p.state, p.started_at, p.ready_at, result.figures.get(p.name)) for p in pods]


class TargetLoop:
    def __init__(self, name: str, policy: Policy, limits: ScaleLimits, outage: OutageRules, backend: Backend,
                 source: MetricSource, telemetry: Telemetry, shadow: bool = False,
                 stuck_pending_s: float = 600.0) -> None:
        self.name = name
        self.controller = Controller(policy, limits, outage)
        self.backend = backend
        self.source = source
        self.telemetry = telemetry
        self.shadow = shadow
        self.stuck_pending_s = stuck_pending_s
        self.last: LastDecision | None = None
        self.ticks = 0  # completed ticks
        self.failed_ticks = 0
        self.last_error: str | None = None
        self.last_tick_monotonic: float | None = None  # when a tick last completed
        telemetry.watch(name)

    async def tick(self, now: float | None = None, may_write: bool = True) -> LastDecision:
        started = time.perf_counter()
        now = time.time() if now is None else now
        pods = await self.backend.pods()
        result = await self.source.read(pods)
        for pod_name, why in result.errors.items():
            self.telemetry.scrape_errors.labels(self.name, why.split(":")[0]).inc()
            log.debug("scrape failed", target=self.name, pod=pod_name, error=why)
        current = await self.backend.current_replicas()
        outcome = self.controller.step(now, readings_for(pods, result), current, data_age_s=result.age_s,
                                       router_waiting=self.backend.router_waiting())
        applied, error = await self._act(outcome, current, may_write)
        direction = "up" if outcome.desired > current else "down" if outcome.desired < current else "none"
        self.telemetry.record(self.name, outcome, current, direction)
        self.telemetry.loop_seconds.labels(self.name).observe(time.perf_counter() - started)
        stuck = [p.name for p in pods if p.state is ReplicaState.STARTING and now - p.started_at > self.stuck_pending_s]
        self.last = self._explain(now, current, outcome, applied, result.errors, stuck, error)
        self._log(self.last, direction)
        self.ticks += 1
        self.last_error = None
        self.last_tick_monotonic = time.monotonic()
        self.telemetry.last_tick.labels(self.name).set(time.time())
        return self.last

    def tick_failed(self, exc: BaseException) -> None:
        """Count a tick that raised; the loop goes on."""
        self.failed_ticks += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.telemetry.tick_failures.labels(self.name).inc()
        log.error("tick failed", target=self.name, error=self.last_error)

    async def _act(self, outcome: ControlOutcome, current: int, may_write: bool) -> tuple[bool, str | None]:
        if outcome.desired == current or not may_write or self.shadow:
            return False, None
        try:
            await self.backend.set_replicas(outcome.desired, outcome.guard or outcome.decision.reason,
                                            remove_first=outcome.remove_first)
            return True, None
        except ScaleRefused as exc:
            return False, str(exc)
        except Exception as exc:  # a failed write must not kill the loop
            self.telemetry.scale_errors.labels(self.name).inc()
            return False, f"{type(exc).__name__}: {exc}"

    def _explain(self, now: float, current: int, o: ControlOutcome, applied: bool, errors: dict[str, str],
                 stuck: list[str], error: str | None) -> LastDecision:
        return LastDecision(
            time=now, current=current, desired=o.desired, requested=o.decision.desired_replicas,
            reason=o.decision.reason, applied=applied, shadow=self.shadow, clamps=list(o.clamp.applied),
            guard=o.guard, terms={k: round(v, 4) for k, v in o.decision.terms.items()}, signals=o.signals,
            scrape_errors={**dict(errors), **_rejected(o.signals.rejected_readings)},
            stuck_pending=stuck, error=error,
        )

    def _log(self, d: LastDecision, direction: str) -> None:
        view = d.view()
        fields = {k: view[k] for k in ("current", "desired", "requested", "reason", "applied", "shadow", "clamps",
                                        "guard", "terms", "signals")}
        fields.update(target=self.name, direction=direction)
        for key in ("missing", "stuck_pending", "scrape_errors"):
            if view[key]:
                fields[key] = view[key]
        if d.error:
            log.warning("scale failed", error=d.error, **fields)
        elif direction != "none":
            log.info("scale", **fields)
        else:
            log.debug("hold", **fields)

    async def close(self) -> None:
        await self.source.close()
        await self.backend.close()
