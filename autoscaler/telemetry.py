"""The autoscaler's own /metrics (prometheus-client): decisions, fleet state, and the fleet
view users ask for (TTFT, tokens/s, KV cache, prefix-cache hit rate, queue wait)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from policies.control import ControlOutcome


class Telemetry:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        t = ["target"]
        self.desired = Gauge("qscale_desired_replicas", "Replicas qscale wants.", t, registry=r)
        self.current = Gauge("qscale_current_replicas", "Replicas the workload asks for (spec).", t, registry=r)
        self.ready = Gauge("qscale_ready_replicas", "Ready replicas.", t, registry=r)
        self.starting = Gauge("qscale_starting_replicas", "Replicas starting (not yet ready).", t, registry=r)
        self.queue = Gauge("qscale_queue_depth", "Requests waiting, fleet total.", t, registry=r)
        self.active = Gauge("qscale_active_requests", "Requests running, fleet total.", t, registry=r)
        self.arrivals = Gauge("qscale_arrival_rate", "Requests per second entering the fleet.", t, registry=r)
        self.forecast = Gauge("qscale_arrival_rate_forecast", "Forecast arrival rate one cold start ahead.", t, registry=r)
        self.cold_start = Gauge("qscale_cold_start_seconds", "Cold start the policy plans with (learned or default).", t, registry=r)
        self.ttft = Gauge("qscale_fleet_ttft_seconds", "Mean time to first token, last interval.", t, registry=r)
        self.tokens = Gauge("qscale_fleet_generation_tokens_per_second", "Tokens generated per second.", t, registry=r)
        self.kv = Gauge("qscale_fleet_kv_cache_usage", "Mean KV-cache use over ready replicas, 0..1.", t, registry=r)
        self.prefix = Gauge("qscale_fleet_prefix_cache_hit_rate", "Prefix-cache hit rate, last interval.", t, registry=r)
        self.queue_wait = Gauge("qscale_fleet_queue_wait_seconds", "Mean queue wait, last interval.", t, registry=r)
        self.decisions = Counter("qscale_decisions", "Decisions by direction and reason.", ["target", "direction", "reason"], registry=r)
        self.scrape_errors = Counter("qscale_scrape_errors", "Pods that could not be read.", ["target", "error"], registry=r)
        self.scale_errors = Counter("qscale_scale_errors", "Failed scale writes.", ["target"], registry=r)
        self.loop_seconds = Histogram("qscale_loop_duration_seconds", "One control-loop cycle.", t, registry=r,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.tick_failures = Counter("qscale_tick_failures", "Control-loop ticks that failed.", t, registry=r)
        self.last_tick = Gauge("qscale_last_tick_timestamp_seconds", "When a tick last completed (epoch s).", t,
                               registry=r)
        self.leader = Gauge("qscale_leader", "1 when this instance is the leader.", registry=r)

    def record(self, target: str, outcome: ControlOutcome, current: int, direction: str) -> None:
        s, d = outcome.signals, outcome.decision
        self.desired.labels(target).set(outcome.desired)
        self.current.labels(target).set(current)
        self.ready.labels(target).set(s.ready_replicas)
        self.starting.labels(target).set(s.starting_replicas)
        self.queue.labels(target).set(s.total_waiting)
        self.active.labels(target).set(s.total_running)
        self.kv.labels(target).set(s.mean_kv_cache_usage)
        for gauge, value in (
            (self.arrivals, s.arrival_rate), (self.ttft, s.mean_ttft_s), (self.tokens, s.generation_tokens_per_s),
            (self.prefix, s.prefix_cache_hit_rate), (self.queue_wait, s.mean_queue_wait_s),
            (self.forecast, d.terms.get("forecast_rate")), (self.cold_start, d.terms.get("lead_time_s")),
        ):
            if value is not None and value >= 0:
                gauge.labels(target).set(value)
        # The label is the reason's kind ("fallback", "hold", "scale up for backlog"), never its
        # figures: a reason with changing numbers would grow a new series every tick.
        self.decisions.labels(target, direction, reason_kind(outcome.guard or d.reason)).inc()

    def watch(self, target: str) -> None:
        """Series that must exist from the start (an alert on increase() misses a first step from none)."""
        self.tick_failures.labels(target)
        self.scale_errors.labels(target)


def reason_kind(reason: str) -> str:
    """The part of a reason before its figures: up to the first ':' or digit."""
    kind = reason.split(":", 1)[0]
    for i, ch in enumerate(kind):
        if ch.isdigit():
            kind = kind[:i]
            break
    return kind.strip() or "other"
