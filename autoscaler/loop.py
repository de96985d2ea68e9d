"""One target's control loop: discover, read, decide (the shared control step), act, explain.

Every tick (default 2 s): list the pods, read their metrics, run `Controller.step` (the one
`SignalsBuilder`, the policy, the outage rules and the one `clamp`, as in the simulator),
then write the result through the scaler, unless in shadow mode or not the leader. Each
decision is logged as one structlog event with its inputs, terms, clamps and result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from autoscaler.discovery.base import Discovery, Pod
from autoscaler.metrics.base import MetricSource
from autoscaler.scalers.base import Scaler, ScaleRefused
from autoscaler.telemetry import Telemetry
from policies import Policy, ReplicaReading, ReplicaState, ScaleLimits
from policies.control import Controller, ControlOutcome, OutageRules

log = structlog.get_logger("qscale.loop")


def reading_for(pod: Pod, snap: Any) -> ReplicaReading:
    if snap is None:
        return ReplicaReading(pod.name, pod.state, pod.started_at, pod.ready_at, scraped=False)
    return ReplicaReading(
        name=pod.name, state=pod.state, started_at=pod.started_at, ready_at=pod.ready_at,
        waiting=snap.waiting, running=snap.running, kv_cache_usage=snap.kv_usage or 0.0,
        requests_finished=snap.requests_finished, generation_tokens=snap.generation_tokens,
        prompt_tokens=snap.prompt_tokens, preemptions=snap.preemptions,
        ttft_sum=snap.ttft_sum, ttft_count=snap.ttft_count, prefix_queries=snap.prefix_queries,
        prefix_hits=snap.prefix_hits, queue_sum=snap.queue_sum, queue_count=snap.queue_count,
    )


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
    signals: dict[str, Any]
    missing: list[str]
    scrape_errors: dict[str, str]
    stuck_pending: list[str] = field(default_factory=list)
    error: str | None = None


def _rejected(readings: tuple[str, ...]) -> dict[str, str]:
    """`name: field=value` readings the builder refused, as scrape errors (one clear line each)."""
    out: dict[str, str] = {}
    for item in readings:
        name, _, why = item.partition(": ")
        out[name] = f"rejected reading: {why}"
    return out


class TargetLoop:
    def __init__(self, name: str, policy: Policy, limits: ScaleLimits, outage: OutageRules,
                 discovery: Discovery, source: MetricSource, scaler: Scaler, telemetry: Telemetry,
                 shadow: bool = False, stuck_pending_s: float = 600.0) -> None:
        self.name = name
        self.controller = Controller(policy, limits, outage)
        self.discovery = discovery
        self.source = source
        self.scaler = scaler
        self.telemetry = telemetry
        self.shadow = shadow
        self.stuck_pending_s = stuck_pending_s
        self.last: LastDecision | None = None
        self.ticks = 0

    async def tick(self, now: float | None = None, may_write: bool = True) -> LastDecision:
        started = time.perf_counter()
        now = time.time() if now is None else now
        pods = await self.discovery.pods()
        result = await self.source.read(pods)
        for pod_name, why in result.errors.items():
            self.telemetry.scrape_errors.labels(self.name, why.split(":")[0]).inc()
            log.debug("scrape failed", target=self.name, pod=pod_name, error=why)
        readings = [reading_for(p, result.snapshots.get(p.name)) for p in pods]
        current = await self.scaler.current_replicas()
        router = getattr(self.discovery, "router_waiting", None)
        outcome = self.controller.step(now, readings, current, data_age_s=result.age_s,
                                       router_waiting=router() if router else 0.0)
        desired = outcome.desired
        stuck = [p.name for p in pods if p.state is ReplicaState.STARTING and now - p.started_at > self.stuck_pending_s]
        applied, error = False, None
        if desired != current and may_write and not self.shadow:
            try:
                await self.scaler.set_replicas(desired, outcome.guard or outcome.decision.reason)
                applied = True
            except ScaleRefused as exc:
                error = str(exc)
            except Exception as exc:  # a failed write must not kill the loop
                error = f"{type(exc).__name__}: {exc}"
                self.telemetry.scale_errors.labels(self.name).inc()
        direction = "up" if desired > current else "down" if desired < current else "none"
        self.telemetry.record(self.name, outcome, current, direction)
        self.telemetry.loop_seconds.labels(self.name).observe(time.perf_counter() - started)
        self.last = self._explain(now, current, outcome, applied, result.errors, stuck, error)
        self._log(self.last, direction)
        self.ticks += 1
        return self.last

    def _explain(self, now: float, current: int, o: ControlOutcome, applied: bool, errors: dict[str, str],
                 stuck: list[str], error: str | None) -> LastDecision:
        s = o.signals
        return LastDecision(
            time=now, current=current, desired=o.desired, requested=o.decision.desired_replicas,
            reason=o.decision.reason, applied=applied, shadow=self.shadow, clamps=list(o.clamp.applied),
            guard=o.guard, terms={k: round(v, 4) for k, v in o.decision.terms.items()},
            signals={
                "ready": s.ready_replicas, "starting": s.starting_replicas, "draining": s.draining_replicas,
                "waiting": s.total_waiting, "running": s.total_running, "arrival_rate": s.arrival_rate,
                "kv_cache_usage": round(s.mean_kv_cache_usage, 4), "ttft_s": s.mean_ttft_s,
                "generation_tokens_per_s": s.generation_tokens_per_s, "prefix_cache_hit_rate": s.prefix_cache_hit_rate,
                "queue_wait_s": s.mean_queue_wait_s, "complete": s.complete,
            },
            missing=list(s.missing), scrape_errors={**dict(errors), **_rejected(s.rejected_readings)},
            stuck_pending=stuck, error=error,
        )

    def _log(self, d: LastDecision, direction: str) -> None:
        fields = dict(target=self.name, current=d.current, desired=d.desired, requested=d.requested,
                      reason=d.reason, direction=direction, applied=d.applied, shadow=d.shadow,
                      clamps=d.clamps, guard=d.guard, terms=d.terms, signals=d.signals)
        if d.missing:
            fields["missing"] = d.missing
        if d.stuck_pending:
            fields["stuck_pending"] = d.stuck_pending
        if d.error:
            log.warning("scale failed", error=d.error, **fields)
        elif direction != "none":
            log.info("scale", **fields)
        else:
            log.debug("hold", **fields)

    async def close(self) -> None:
        await self.source.close()
        await self.scaler.close()
