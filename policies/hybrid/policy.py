"""qscale's hybrid policy: a warm fleet sized for the bursts a cold start cannot catch, plus
capacity ordered one cold start ahead of a rising demand, all measured in work.

desired = max(floor, max(warm, now) + trend x lead + backlog), where (in replicas)

* **now** is today's demand: arrival rate x replica-seconds per request (from
  the learned request mix and the engine's step-time model, at the largest
  batch the KV cache allows) / `target_utilization` (a fleet planned at 100 %
  of its capacity queues without bound at the first excess);
* **warm** is the demand's level (a lower quartile that bursts do not move) plus the
  `burst_quantile` of how far demand peaked above its level within past
  cold-start-long windows (`policies/hybrid/demand.py`): bursts shorter than
  a cold start can only be absorbed by capacity that is already there;
* **trend x lead** orders ahead of a slow swell (a trend that bursts and
  steps do not move, only upward);
* **backlog** is capacity for the part of a queue that today's ready fleet
  cannot drain within one cold start; a queue it drains sooner is no reason
  to start a replica that would be ready only after;
* **floor** is `min_replicas` and the time-of-day schedule.

Scale-up applies at once. Going down, replicas still starting are cancelled as
soon as they have not been needed for `cancel_starting_after_s`; ready ones
are kept while they were needed within the stabilization window (one cold
start by default: releasing a replica needed again within a cold start costs
more than keeping it) and then removed at most `scale_down_percent` per
`scale_down_period_s`. Missing, stale or stuck data is the shared control
step's business (`policies/control.py`), not the policy's: this policy only
refuses to learn from incomplete readings.
"""

from __future__ import annotations

import math

from policies.base import Policy
from policies.coldstart import ColdStartEstimator
from policies.decision import Decision
from policies.hybrid.demand import DemandTracker
from policies.hybrid.mix import RequestMix
from policies.hybrid.params import HybridParams
from policies.signals import Signals
from policies.windows import TimedWindow


class HybridPolicy(Policy):
    """Warm capacity for bursts + work-based, cold-start-aware scaling (qscale's own policy)."""

    name = "hybrid"
    Params = HybridParams
    params: HybridParams

    def __init__(self, params: HybridParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.cold_start = ColdStartEstimator(p.default_cold_start_s, p.cold_start_min_observations,
                                             p.cold_start_quantile)
        self.mix = RequestMix(p.mix_halflife_s, p.prior_prompt_tokens, p.prior_output_tokens)
        self.demand = DemandTracker(p.demand_halflife_s, p.level_window_s, p.trend_window_s, p.burst_history_s)
        # (time, replicas wanted) for the scale-down windows: the stabilization, or a cold start
        self._needed = TimedWindow(max(3600.0, p.scale_down_stabilization_s or 0.0, p.default_cold_start_s))
        # (time, replicas ordered, backlog included) for cancelling starting replicas
        self._ordered = TimedWindow(max(60.0, p.cancel_starting_after_s))
        self._removals = TimedWindow(p.scale_down_period_s)
        self._last_time: float | None = None
        self._first_time: float | None = None

    # --- learning ----------------------------------------------------------------------

    def _learn(self, s: Signals, lead_s: float) -> float:
        """Update the mix and the demand; returns replica-seconds per request."""
        dt = s.time - self._last_time if self._last_time is not None else 0.0
        self._last_time = s.time
        self.mix.observe(s, dt, self.params.engine.kv_cache_tokens)
        cost = self.mix.request_seconds(self.params.engine)
        if s.arrival_rate is not None and math.isfinite(s.arrival_rate):
            self.demand.add(s.time, s.arrival_rate * cost, lead_s)
        return cost

    # --- the terms ---------------------------------------------------------------------

    def floor(self, s: Signals) -> int:
        p = self.params
        scheduled = max((w.replicas for w in p.schedule if w.active(s.time, p.utc_offset_hours)), default=0)
        return max(p.min_replicas, scheduled)

    def backlog(self, s: Signals, cost: float, now: float, lead_s: float) -> float:
        """Replicas for the part of the queue today's ready fleet cannot drain within one cold
        start; anything ordered now serves only after that, so it drains that part over a cold
        start plus `drain_target_s` (a bigger order would arrive after the queue is gone)."""
        queued = s.total_waiting * cost  # replica-seconds of work
        if queued <= 0:
            return 0.0
        spare = max(0.0, s.ready_replicas - now)
        left = queued - spare * lead_s
        return max(0.0, left) / (lead_s + self.params.drain_target_s)

    # --- the decision ------------------------------------------------------------------

    def decide(self, s: Signals) -> Decision:
        p = self.params
        if self._first_time is None:
            self._first_time = s.time
        self.cold_start.observe(s)
        lead_s = self.cold_start.estimate()
        # Incomplete readings read low: learn nothing from them.
        cost = self._learn(s, lead_s) if s.complete else self.mix.request_seconds(p.engine)
        level = self.demand.level
        warm = level + self.demand.headroom(p.burst_quantile)
        # Sustained demand is planned at `target_utilization`; bursts (warm) at full capacity.
        now = self.demand.now / p.target_utilization
        # What is ordered now is ready one cold start from now; the trend is measured late by
        # about one trend window.
        ahead = max(0.0, self.demand.trend) * (lead_s + p.trend_window_s)
        backlog = self.backlog(s, cost, now, lead_s)
        floor = self.floor(s)
        want = max(float(floor), max(warm, now) + ahead + backlog)
        raw = self.ceil_bounded(want, s.current_replicas)
        terms = {"now_replicas": now, "level_replicas": level, "warm_replicas": warm, "ahead_replicas": ahead,
                 "backlog_replicas": backlog, "floor": floor, "lead_time_s": lead_s,
                 "request_seconds": cost, "mean_prompt": self.mix.prompt.value,
                 "mean_output": self.mix.output.value, "kv_context": self.mix.context.value, "raw": raw}
        # A backlog is transient by nature: what it orders is not kept through the stabilization.
        self._needed.add(s.time, self.ceil_bounded(want - backlog, s.current_replicas))
        self._ordered.add(s.time, raw)
        current = s.current_replicas
        if raw > current:
            return Decision(raw, f"scale up for {self._why(warm + ahead, now, backlog, floor)}", terms)
        if raw == current or s.arrival_rate is None:
            return Decision(current, "steady", terms)
        return self._scale_down(s, raw, lead_s, terms)

    @staticmethod
    def _why(warm: float, now: float, backlog: float, floor: int) -> str:
        biggest = max((warm, "warm capacity for bursts"), (now, "demand now"),
                      (now + backlog, "backlog"), (float(floor), "floor"))
        return biggest[1]

    def _scale_down(self, s: Signals, raw: int, lead_s: float, terms: dict[str, float]) -> Decision:
        p = self.params
        current = s.current_replicas
        if self._first_time is not None and s.time - self._first_time < p.min_history_s:
            # Too little seen yet to know which bursts to expect: nothing goes, not even a replica
            # still starting (it may be the replacement of one that failed, not an order).
            terms.update(stabilized=current, cancel_starting=0, release_ready=0)
            return Decision(current, "scale-down stabilizing: too little history", terms)
        # Replicas still starting serve nobody yet: cancel those no term (a backlog included)
        # has wanted for `cancel_starting_after_s`, unless a queue is waiting for them. One low
        # reading of a busy server's queue gauge must not cancel what the queue ordered.
        recent = int(self._ordered.max_since(s.time - p.cancel_starting_after_s, raw))
        queue = s.total_waiting > s.ready_replicas
        cancel = 0 if queue else min(s.starting_replicas, max(0, current - recent))
        # Ready replicas: keep what was needed within the window, then a percentage per period.
        window = p.scale_down_stabilization_s if p.scale_down_stabilization_s is not None else lead_s
        stabilized = int(self._needed.max_since(s.time - window, raw))
        self._removals.evict(s.time)
        allowed = max(1, math.floor(current * p.scale_down_percent / 100)) - int(self._removals.total())
        release = min(max(0, allowed), max(0, current - cancel - stabilized))
        if s.starting_replicas:
            # A fleet removes replicas not yet ready first (a ReplicaSet does): releasing a ready
            # one now would cancel a starting one, which only the cancel rule above may do.
            release = 0
        terms.update(stabilized=stabilized, cancel_starting=cancel, release_ready=release)
        if cancel + release == 0:
            return Decision(current, "scale-down stabilizing", terms)
        if release:
            self._removals.add(s.time, release)
        target = current - cancel - release
        reason = "cancel replicas still starting" if not release else "scale down: demand fell"
        return Decision(target, reason, terms)
