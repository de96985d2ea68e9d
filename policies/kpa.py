"""A port of Knative Serving's KPA (pkg/autoscaler/scaling/autoscaler.go).

Concurrency (requests in flight at the replicas, plus any held before them as
the activator would) is averaged over a 60-s stable window and a 6-s panic
window. Every 2-s tick:

* desired pods = ceil(average / target), kept within
  [floor(ready / max_scale_down_rate), ceil(ready * max_scale_up_rate)];
* panic starts when the panic-window demand reaches 200 % of ready pods and
  lasts until a whole stable window passes below the threshold; while in panic
  the count never decreases;
* scale to zero waits for the grace period (30 s) after zero is first wanted,
  as the KPA waits for the activator to be in the request path.

Differences from upstream: concurrency is averaged over the samples seen (one per call)
rather than per-second buckets; `scale-down-delay`, `activation-scale`, `initial-scale`
and the excess-burst-capacity (activator placement) logic are not modelled. The default
`target` is upstream's container-concurrency-target-default (100) at 70 % utilization.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field

from policies.base import Policy, PolicyParams
from policies.decision import Decision
from policies.signals import Signals
from policies.tunable import Tunable
from policies.windows import TimedWindow


class KpaParams(PolicyParams):
    min_replicas: int = Field(0, description="min-scale")
    max_replicas: int = Field(100, description="max-scale")
    target: Annotated[float, Tunable(1, 1024, log=True)] = Field(
        100.0, gt=0, description="container-concurrency-target (requests in flight per replica)"
    )
    target_utilization: float = Field(0.7, gt=0, le=1, description="target-utilization-percentage/100")
    stable_window_s: Annotated[float, Tunable(6, 600, log=True)] = Field(60.0, ge=6, le=3600)
    panic_window_percentage: float = Field(10.0, ge=1, le=100)
    panic_threshold_percentage: Annotated[float, Tunable(110, 1000, log=True)] = Field(200.0, ge=110, le=1000)
    max_scale_up_rate: float = Field(1000.0, gt=1)
    max_scale_down_rate: Annotated[float, Tunable(1.1, 10, log=True)] = Field(2.0, gt=1)
    scale_to_zero_grace_period_s: float = Field(30.0, ge=0)
    tick_s: float = Field(2.0, gt=0)


class KpaPolicy(Policy):
    """Knative Pod Autoscaler: stable and panic windows over concurrency."""

    name = "kpa"
    Params = KpaParams
    params: KpaParams

    def __init__(self, params: KpaParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.panic_window_s = p.stable_window_s * p.panic_window_percentage / 100
        self._stable = TimedWindow(p.stable_window_s)
        self._panic = TimedWindow(self.panic_window_s)
        self._panic_time: float | None = None
        self._max_panic_pods = 0
        self._last_tick: float | None = None
        self._zero_wanted_since: float | None = None

    def _record(self, signals: Signals) -> None:
        # The collector samples concurrency continuously; here once per call.
        concurrency = signals.total_in_flight
        self._stable.add(signals.time, concurrency)
        self._panic.add(signals.time, concurrency)

    def decide(self, signals: Signals) -> Decision:
        p = self.params
        now, current = signals.time, signals.current_replicas
        self._record(signals)
        # The decider runs once per tick.
        if self._last_tick is not None and now - self._last_tick < p.tick_s:
            return Decision(current, "waiting for next KPA tick")
        self._last_tick = now

        stable_value, panic_value = self._stable.mean(), self._panic.mean()
        if stable_value is None or panic_value is None:
            return Decision(current, "no data to scale on yet")
        desired, terms = self._scale(now, signals.ready_replicas, stable_value, panic_value)
        return self._apply_scale_to_zero(now, current, desired, terms)

    def _scale(
        self, now: float, ready: int, stable_value: float, panic_value: float
    ) -> tuple[int, dict[str, float]]:
        """Autoscaler.Scale: the pod count the windows ask for."""
        p = self.params
        target = p.target * p.target_utilization
        ready_pods = max(1.0, float(ready))
        # Rates bound the move so a conservative rate still allows one pod either way.
        max_scale_up = math.ceil(p.max_scale_up_rate * ready_pods)
        max_scale_down = math.floor(ready_pods / p.max_scale_down_rate)

        dspc = math.ceil(stable_value / target)
        dppc = math.ceil(panic_value / target)
        desired_stable = int(min(max(dspc, max_scale_down), max_scale_up))
        desired_panic = int(min(max(dppc, max_scale_down), max_scale_up))

        over_threshold = dppc / ready_pods >= p.panic_threshold_percentage / 100
        if over_threshold:
            # Begin panicking, or extend the panic while still over the threshold.
            self._panic_time = now
        elif self._panic_time is not None and self._panic_time + p.stable_window_s <= now:
            # The surge has made its way into the stable window: stop panicking.
            self._panic_time = None
            self._max_panic_pods = 0

        desired = desired_stable
        if self._panic_time is not None:
            # Provision for the larger of the two windows, and never scale down in panic.
            desired = max(desired, desired_panic)
            self._max_panic_pods = max(self._max_panic_pods, desired)
            desired = self._max_panic_pods

        terms = {
            "stable_concurrency": stable_value,
            "panic_concurrency": panic_value,
            "target_per_replica": target,
            "desired_stable": desired_stable,
            "desired_panic": desired_panic,
            "panicking": 1.0 if self._panic_time is not None else 0.0,
        }
        return desired, terms

    def _apply_scale_to_zero(
        self, now: float, current: int, desired: int, terms: dict[str, float]
    ) -> Decision:
        p = self.params
        bounded = self.bounded(desired)
        if bounded == 0:
            # Zero is applied only once it has been wanted for the whole grace period.
            if self._zero_wanted_since is None:
                self._zero_wanted_since = now
            waited = now - self._zero_wanted_since
            if current > 0 and waited < p.scale_to_zero_grace_period_s:
                return Decision(current, "scale to zero pending grace period", terms)
            return Decision(0, "no traffic: scaled to zero", terms)
        self._zero_wanted_since = None
        reason = "panic mode: holding or growing" if terms["panicking"] else "stable window"
        return Decision(bounded, reason, terms)
