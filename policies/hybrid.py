"""qscale's hybrid policy: a warm baseline plus burst capacity ordered one cold start ahead.

desired = max(baseline, demand_replicas + backlog_replicas), where

* **baseline** is the largest of `min_replicas`, the time-of-day schedule, and
  a low quantile of the demand seen over a long window (the steady traffic
  that is almost always there: keep it warm);
* **demand_replicas** sizes the fleet for the arrival rate *forecast at a lead
  time equal to the cold start* (Holt's level-and-trend smoothing), so capacity
  ordered now is ready when the demand lands. Replicas needed for a rate follow
  Little's law: rate x service time / target concurrency per replica, with the
  service time measured as running / completions;
* **backlog_replicas** adds what it takes to drain the current queue within
  `drain_target_s` at the measured per-replica throughput.

The answer is an absolute replica count that includes replicas already
starting, so capacity in flight is never ordered twice. Replicas stuck
starting past `stuck_starting_timeout_s` stop further scale-up (more orders
would only queue behind the same problem).

Scale-up applies at once. Scale-down takes the highest recommendation over
`scale_down_stabilization_s`, removes at most `scale_down_step` replicas per
`scale_down_period_s`, never goes below the baseline, and never happens on
incomplete or stale data.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.base import Policy, PolicyParams
from policies.coldstart import ColdStartEstimator
from policies.decision import Decision
from policies.signals import Signals
from policies.windows import BucketedQuantile, HoltForecaster, TimedWindow


class ScheduleWindow(BaseModel):
    """Keep at least `replicas` warm between `start_hour` and `end_hour` (local time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start_hour: float = Field(ge=0, le=24)
    end_hour: float = Field(ge=0, le=24)
    replicas: int = Field(ge=0)
    weekdays: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)  # Monday = 0

    def active(self, epoch_s: float, utc_offset_hours: float) -> bool:
        local = epoch_s + utc_offset_hours * 3600
        days = math.floor(local / 86400)
        weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
        hour = (local - days * 86400) / 3600
        if weekday not in self.weekdays:
            return False
        if self.start_hour <= self.end_hour:
            return self.start_hour <= hour < self.end_hour
        return hour >= self.start_hour or hour < self.end_hour  # wraps midnight


class HybridParams(PolicyParams):
    min_replicas: int = 1
    max_replicas: int = 50
    target_concurrency: float = Field(
        32.0, gt=0, description="requests in flight per replica to size for (below max_num_seqs)"
    )
    default_service_time_s: float = Field(
        8.0, gt=0, description="seconds a request stays running, until measured"
    )
    service_time_window_s: float = Field(60.0, gt=0, description="window for measuring the service time")
    service_time_min_completions: int = Field(5, ge=1, description="completions needed to trust a measurement")
    level_halflife_s: float = Field(20.0, ge=0, description="Holt level smoothing")
    trend_halflife_s: float = Field(60.0, ge=0, description="Holt trend smoothing")
    drain_target_s: float = Field(30.0, gt=0, description="drain the current queue within this")
    default_cold_start_s: float = Field(120.0, ge=0)
    cold_start_min_observations: int = Field(3, ge=1)
    cold_start_quantile: float = Field(0.75, ge=0, le=1)
    baseline_quantile: float = Field(0.2, ge=0, le=1)
    baseline_window_s: float = Field(3600.0, gt=0)
    baseline_bucket_s: float = Field(60.0, gt=0)
    schedule: tuple[ScheduleWindow, ...] = ()
    utc_offset_hours: float = Field(0.0, ge=-14, le=14)
    scale_down_stabilization_s: float = Field(300.0, ge=0)
    scale_down_step: int = Field(2, ge=1, description="most replicas removed per period")
    scale_down_period_s: float = Field(60.0, gt=0)
    stuck_starting_timeout_s: float = Field(900.0, gt=0)
    stale_after_s: float = Field(30.0, gt=0, description="data older than this is stale")

    @model_validator(mode="after")
    def _schedule_within_bounds(self) -> HybridParams:
        for w in self.schedule:
            if w.replicas > self.max_replicas:
                raise ValueError(f"schedule replicas {w.replicas} exceed max_replicas")
        return self


class HybridPolicy(Policy):
    """Warm baseline + cold-start-aware burst capacity (qscale's own policy)."""

    name = "hybrid"
    Params = HybridParams
    params: HybridParams

    def __init__(self, params: HybridParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.forecaster = HoltForecaster(p.level_halflife_s, p.trend_halflife_s)
        self.cold_start = ColdStartEstimator(
            p.default_cold_start_s, p.cold_start_min_observations, p.cold_start_quantile
        )
        self.service_time_s = p.default_service_time_s
        self._service_time_measured = False
        self._running_area = TimedWindow(p.service_time_window_s)
        self._completions = TimedWindow(p.service_time_window_s)
        self._demand_history = BucketedQuantile(p.baseline_window_s, p.baseline_bucket_s)
        self._recommendations = TimedWindow(p.scale_down_stabilization_s)
        self._removals = TimedWindow(p.scale_down_period_s)
        self._last_time: float | None = None

    # --- learning from the signals ---------------------------------------------------

    def _learn(self, s: Signals, dt: float) -> None:
        """Update forecasts and estimates; only complete, fresh data teaches anything."""
        self.cold_start.observe(s)
        if s.arrival_rate is not None:
            self.forecaster.update(s.time, s.arrival_rate)
        if s.completion_rate is not None and dt > 0:
            # Little's law over a window: time in service = integral of running / completions.
            self._running_area.add(s.time, s.total_running * dt)
            self._completions.add(s.time, s.completion_rate * dt)
            done = self._completions.total()
            if done >= self.params.service_time_min_completions:
                self.service_time_s = self._running_area.total() / done
                self._service_time_measured = True

    # --- the terms -------------------------------------------------------------------

    def replicas_for_rate(self, rate: float) -> float:
        """Little's law: replicas that keep `target_concurrency` in flight each at `rate`."""
        return rate * self.service_time_s / self.params.target_concurrency

    def per_replica_throughput(self) -> float:
        """Requests per second one replica completes at the target concurrency."""
        return self.params.target_concurrency / self.service_time_s

    def baseline(self, s: Signals) -> tuple[int, dict[str, float]]:
        p = self.params
        scheduled = max(
            (w.replicas for w in p.schedule if w.active(s.time, p.utc_offset_hours)), default=0
        )
        steady = self._demand_history.quantile(p.baseline_quantile) or 0.0
        steady_replicas = math.ceil(steady - 1e-9)
        return max(p.min_replicas, scheduled, steady_replicas), {
            "schedule_replicas": scheduled,
            "steady_demand_replicas": steady,
        }

    def demand(self, s: Signals, lead_s: float) -> tuple[float, dict[str, float]]:
        """Replicas (fractional) for the larger of today's demand and the demand one cold start ahead."""
        level = self.forecaster.level
        forecast = self.forecaster.forecast(lead_s)
        rate = max(level or 0.0, forecast or 0.0)
        # What is running right now is a floor that needs no estimate at all.
        running_replicas = s.total_running / self.params.target_concurrency
        # Until a completion has measured the service time, a rate cannot be turned into
        # replicas without guessing: size on what runs (and the backlog) alone.
        rate_replicas = self.replicas_for_rate(rate) if self._service_time_measured else 0.0
        needed = max(rate_replicas, running_replicas)
        return needed, {
            "arrival_rate": s.arrival_rate if s.arrival_rate is not None else -1.0,
            "arrival_rate_level": level if level is not None else -1.0,
            "forecast_rate": forecast if forecast is not None else -1.0,
            "forecast_trend": self.forecaster.trend,
            "service_time_s": self.service_time_s,
            "running_replicas": running_replicas,
        }

    def backlog(self, s: Signals) -> float:
        """Replicas (fractional) that drain the current queue within `drain_target_s`."""
        if s.total_waiting <= 0:
            return 0.0
        per_replica = self.per_replica_throughput() * self.params.drain_target_s
        return s.total_waiting / per_replica

    # --- the decision ----------------------------------------------------------------

    def decide(self, s: Signals) -> Decision:
        p = self.params
        if self._last_time is None:
            # Like the HPA, start the scale-down window from today's count, not from nothing.
            self._recommendations.add(s.time, s.current_replicas)
        dt = s.time - self._last_time if self._last_time is not None else 0.0
        self._last_time = s.time
        current = s.current_replicas
        trustworthy = s.complete and s.data_age_s <= p.stale_after_s

        if s.data_age_s > p.stale_after_s:
            # Stale data: nothing to learn from and nothing to act on.
            return Decision(current, f"holding: data is {s.data_age_s:.0f}s old", {})
        if trustworthy:
            self._learn(s, dt)
        else:
            self.cold_start.observe(s)

        lead_s = self.cold_start.estimate()
        base, base_terms = self.baseline(s)
        demand, demand_terms = self.demand(s, lead_s)
        backlog = self.backlog(s)
        if trustworthy and self._service_time_measured:
            self._demand_history.add(s.time, self.replicas_for_rate(self.forecaster.level or 0.0))
        # Sum the fractions, round once: a 0.1-replica queue does not order a whole replica.
        burst = math.ceil(demand + backlog - 1e-9)
        raw = self.bounded(max(base, burst))
        terms: dict[str, float] = {
            "baseline": base,
            **base_terms,
            "lead_time_s": lead_s,
            "cold_start_learned": 1.0 if self.cold_start.learned else 0.0,
            "demand_replicas": demand,
            "burst_replicas": burst,
            **demand_terms,
            "backlog_replicas": backlog,
            "waiting": s.total_waiting,
            "raw": raw,
        }

        stuck = [r for r in s.starting() if s.time - r.started_at > p.stuck_starting_timeout_s]
        if raw > current:
            if stuck:
                # Pods that never become ready: more orders would queue behind the same fault.
                terms["stuck_starting"] = len(stuck)
                return self._record(s, current, current, f"holding: {len(stuck)} replicas stuck starting", terms)
            # Scale up at once; starting replicas are already part of `current`.
            if burst <= base:
                why = "baseline"
            elif backlog and math.ceil(demand - 1e-9) < burst:
                why = "backlog"
            else:
                why = "forecast demand"
            return self._record(s, raw, current, f"scale up for {why}", terms)

        if not trustworthy:
            # Incomplete data reads low: never scale down on it.
            return Decision(current, f"holding: {len(s.missing)} replicas unreadable", terms)
        if s.arrival_rate is None:
            # No rate yet (first look at the fleet): too little to scale down on.
            return Decision(current, "holding: waiting for a second sample", terms)
        return self._scale_down(s, raw, current, base, terms)

    def _scale_down(
        self, s: Signals, raw: int, current: int, base: int, terms: dict[str, float]
    ) -> Decision:
        p = self.params
        # Stabilize: the highest recommendation over the window.
        self._recommendations.evict(s.time)
        stabilized = int(max(raw, self._recommendations.max(default=raw)))
        self._recommendations.add(s.time, raw)
        terms["stabilized"] = stabilized
        if stabilized >= current:
            reason = "steady" if raw == current else "scale-down stabilizing"
            return Decision(current, reason, terms)
        # Rate-limit removals, and never go below the baseline.
        self._removals.evict(s.time)
        allowed = max(0, p.scale_down_step - int(self._removals.total()))
        target = max(stabilized, current - allowed, base)
        if target >= current:
            return Decision(current, "scale-down rate limited", terms)
        self._removals.add(s.time, current - target)
        return Decision(target, "scale down: demand fell", terms)

    def _record(
        self, s: Signals, desired: int, current: int, reason: str, terms: dict[str, float]
    ) -> Decision:
        """A scale-up (or a held one): remembered so scale-down waits out the window after it."""
        self._recommendations.add(s.time, terms.get("raw", desired))
        return Decision(desired, reason, terms)
