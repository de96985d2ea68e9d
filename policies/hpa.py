"""A port of the Kubernetes HorizontalPodAutoscaler (autoscaling/v2) algorithm.

Follows pkg/controller/podautoscaler (horizontal.go, replica_calculator.go) for
a `Pods` metric with an `AverageValue` target (e.g. vLLM queue depth per pod):

* runs once per sync period (15 s), holding in between;
* replica count from the per-pod average with a 10 % tolerance, and upstream's
  handling of unready pods (pending: assumed 0 on a scale-up) and pods with
  missing metrics (assumed at target on a scale-down, 0 on a scale-up), never
  flipping the direction of the scale;
* `behavior`: stabilization windows (scale-up 0 s: lowest recommendation in the
  window; scale-down 300 s: highest), then rate-limit policies over their
  periods from the recorded scale events (default up: max(100 %, 4 pods) per
  15 s; down: 100 % per 15 s);
* min and max replicas; at 0 current replicas with min > 0 scaling is disabled.

Mapping to qscale's signals: a STARTING replica without metrics is a pending
(unready) pod; a READY replica whose scrape failed is a pod with a missing
metric; DRAINING replicas have a deletion timestamp and are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.base import Policy, PolicyParams
from policies.decision import Decision
from policies.signals import ReplicaSample, ReplicaState, Signals
from policies.tunable import Tunable

PodMetric = Literal["waiting", "running", "in_flight", "kv_cache_usage"]


def pod_metric(sample: ReplicaSample, metric: PodMetric) -> float:
    if metric == "waiting":
        return sample.waiting
    if metric == "running":
        return sample.running
    if metric == "in_flight":
        return sample.in_flight
    return sample.kv_cache_usage


class ScalingPolicy(BaseModel):
    """One HPAScalingPolicy: `type` Pods or Percent, `value` per `period_s`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0)
    period_s: float = Field(gt=0, le=1800)


class ScalingRules(BaseModel):
    """HPAScalingRules: a stabilization window, policies and how to select among them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stabilization_window_s: float = Field(ge=0, le=3600)
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    policies: tuple[ScalingPolicy, ...]


DEFAULT_SCALE_UP = ScalingRules(
    stabilization_window_s=0,
    policies=(
        ScalingPolicy(type="Percent", value=100, period_s=15),
        ScalingPolicy(type="Pods", value=4, period_s=15),
    ),
)
DEFAULT_SCALE_DOWN = ScalingRules(
    stabilization_window_s=300,
    policies=(ScalingPolicy(type="Percent", value=100, period_s=15),),
)


class HpaBehaviorParams(PolicyParams):
    """Fields shared by every HPA-driven policy (hpa, keda)."""

    min_replicas: int = 1
    max_replicas: int = 10
    # Searched wide: a good target on requests in flight is 10-100x one on waiting requests.
    target_average_value: Annotated[float, Tunable(0.25, 512, log=True)] = Field(5.0, gt=0)
    tolerance: float = Field(0.1, ge=0, lt=1)
    sync_period_s: float = Field(15.0, gt=0)
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN


class HpaParams(HpaBehaviorParams):
    metric: Annotated[PodMetric, Tunable(choices=("waiting", "in_flight"))] = "waiting"


@dataclass(slots=True)
class _Event:
    time: float
    change: int


class HpaController:
    """The HPA's per-target state: recommendations and scale events, as upstream keeps them."""

    def __init__(self, params: HpaBehaviorParams) -> None:
        self.p = params
        self.recommendations: list[tuple[float, int]] | None = None
        self.scale_up_events: list[_Event] = []
        self.scale_down_events: list[_Event] = []

    # --- behavior: stabilization then rate limits (horizontal.go) -------------------

    def normalize(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """normalizeDesiredReplicasWithBehaviors."""
        if self.recommendations is None:
            # maybeInitScaleDownStabilizationWindow: seed with the current count.
            self.recommendations = [(now, current)]
        stabilized = self._stabilize(now, current, desired)
        limited, reason = self._rate_limit(now, current, stabilized)
        if stabilized != desired and limited == stabilized:
            reason = "stabilization window holds the recommendation"
        return limited, reason

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        """stabilizeRecommendationWithBehaviors: min over the up window, max over the down window."""
        assert self.recommendations is not None
        up_cutoff = now - self.p.scale_up.stabilization_window_s
        down_cutoff = now - self.p.scale_down.stabilization_window_s
        up_rec = down_rec = desired
        old_index: int | None = None
        for i, (t, rec) in enumerate(self.recommendations):
            if t > up_cutoff:
                up_rec = min(rec, up_rec)
            if t > down_cutoff:
                down_rec = max(rec, down_rec)
            if t < up_cutoff and t < down_cutoff:
                old_index = i
        recommendation = current
        if recommendation < up_rec:
            recommendation = up_rec
        if recommendation > down_rec:
            recommendation = down_rec
        # Record the unstabilized recommendation, reusing an expired slot as upstream does.
        if old_index is not None:
            self.recommendations[old_index] = (now, desired)
        else:
            self.recommendations.append((now, desired))
        return recommendation

    @staticmethod
    def _change_in_period(events: list[_Event], now: float, period_s: float) -> int:
        """getReplicasChangePerPeriod."""
        cutoff = now - period_s
        return sum(e.change for e in events if e.time > cutoff)

    def _scale_up_limit(self, now: float, current: int) -> int:
        rules = self.p.scale_up
        if rules.select_policy == "Disabled":
            return current
        pick = min if rules.select_policy == "Min" else max
        result: int | None = None
        for pol in rules.policies:
            added = self._change_in_period(self.scale_up_events, now, pol.period_s)
            deleted = self._change_in_period(self.scale_down_events, now, pol.period_s)
            start = current - added + deleted
            if pol.type == "Pods":
                proposed = start + pol.value
            else:
                proposed = math.ceil(start * (1 + pol.value / 100))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result

    def _scale_down_limit(self, now: float, current: int) -> int:
        rules = self.p.scale_down
        if rules.select_policy == "Disabled":
            return current
        # For scale-down "Max" means the policy allowing the largest change: the lowest limit.
        pick = max if rules.select_policy == "Min" else min
        result: int | None = None
        for pol in rules.policies:
            added = self._change_in_period(self.scale_up_events, now, pol.period_s)
            deleted = self._change_in_period(self.scale_down_events, now, pol.period_s)
            start = current - added + deleted
            if pol.type == "Pods":
                proposed = start - pol.value
            else:
                proposed = int(start * (1 - pol.value / 100))  # truncation, as upstream
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result

    def _rate_limit(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """convertDesiredReplicasWithBehaviorRate."""
        if desired > current:
            limit = max(self._scale_up_limit(now, current), current)
            maximum = min(self.p.max_replicas, limit)
            if desired > maximum:
                why = "scale-up limited by behavior policy" if limit < self.p.max_replicas else "capped at max_replicas"
                return maximum, why
            return desired, "metric above target"
        if desired < current:
            limit = min(self._scale_down_limit(now, current), current)
            minimum = max(self.p.min_replicas, limit)
            if desired < minimum:
                why = "scale-down limited by behavior policy" if limit > self.p.min_replicas else "held at min_replicas"
                return minimum, why
            return desired, "metric below target"
        return desired, "within tolerance"

    def record_scale(self, now: float, previous: int, new: int) -> None:
        """storeScaleEvent, dropping events older than the longest policy period."""
        longest_up = max((p.period_s for p in self.p.scale_up.policies), default=0)
        longest_down = max((p.period_s for p in self.p.scale_down.policies), default=0)
        self.scale_up_events = [e for e in self.scale_up_events if e.time > now - longest_up]
        self.scale_down_events = [e for e in self.scale_down_events if e.time > now - longest_down]
        if new > previous:
            self.scale_up_events.append(_Event(now, new - previous))
        elif new < previous:
            self.scale_down_events.append(_Event(now, previous - new))

    # --- the sync: reconcileAutoscaler ---------------------------------------------

    def reconcile(
        self, now: float, current: int, metric_replicas: int | None, terms: dict[str, float]
    ) -> Decision:
        """One HPA sync given the replica count the metric asks for (None: no valid metric)."""
        p = self.p
        if current == 0 and p.min_replicas != 0:
            return Decision(0, "scaling disabled: target has 0 replicas", terms)
        if current > p.max_replicas:
            desired, reason = p.max_replicas, "current replicas above max_replicas"
        elif current < p.min_replicas:
            desired, reason = p.min_replicas, "current replicas below min_replicas"
        elif metric_replicas is None:
            return Decision(current, "no valid metrics: holding", terms)
        else:
            terms["metric_replicas"] = metric_replicas
            desired, reason = self.normalize(now, current, metric_replicas)
        if desired != current:
            self.record_scale(now, current, desired)
        return Decision(desired, reason, terms)


def replicas_for_pods_metric(
    samples: tuple[ReplicaSample, ...],
    metric: PodMetric,
    target: float,
    tolerance: float,
    current: int,
) -> tuple[int | None, dict[str, float]]:
    """calcPlainMetricReplicas for an AverageValue target on a Pods metric."""
    metrics: dict[str, float] = {}
    unready: list[str] = []
    missing: list[str] = []
    for s in samples:
        if s.state is ReplicaState.DRAINING:
            continue  # deletionTimestamp set: ignored
        if s.state is ReplicaState.STARTING and not s.scraped:
            unready.append(s.name)  # pending pod
            continue
        if not s.scraped:
            missing.append(s.name)
            continue
        metrics[s.name] = pod_metric(s, metric)
    ready_count = len(metrics)
    terms: dict[str, float] = {
        "ready_pods_with_metrics": ready_count,
        "unready_pods": len(unready),
        "missing_pods": len(missing),
    }
    if not metrics:
        return None, terms  # "did not receive metrics for targeted pods"
    usage_ratio = (sum(metrics.values()) / len(metrics)) / target
    terms["average_value"] = usage_ratio * target
    terms["usage_ratio"] = usage_ratio
    scale_up_with_unready = bool(unready) and usage_ratio > 1.0
    if not scale_up_with_unready and not missing:
        if abs(1.0 - usage_ratio) <= tolerance:
            return current, terms
        return math.ceil(usage_ratio * ready_count), terms

    if missing:
        # Scale-down: assume missing pods sit at the target; scale-up: assume they use nothing.
        fill = target if usage_ratio < 1.0 else 0.0
        for name in missing:
            metrics[name] = fill
    if scale_up_with_unready:
        for name in unready:
            metrics[name] = 0.0
    new_ratio = (sum(metrics.values()) / len(metrics)) / target
    terms["usage_ratio_with_assumptions"] = new_ratio
    if (
        abs(1.0 - new_ratio) <= tolerance
        or (usage_ratio < 1.0 < new_ratio)
        or (usage_ratio > 1.0 > new_ratio)
    ):
        return current, terms  # the assumptions would flip or cancel the scale
    new_replicas = math.ceil(new_ratio * len(metrics))
    if (new_ratio < 1.0 and new_replicas > current) or (new_ratio > 1.0 and new_replicas < current):
        return current, terms
    return new_replicas, terms


class HpaPolicy(Policy):
    """Kubernetes HPA on a per-pod AverageValue target (default: 5 waiting requests per pod)."""

    name = "hpa"
    Params = HpaParams
    params: HpaParams

    def __init__(self, params: HpaParams | None = None) -> None:
        super().__init__(params)
        self.controller = HpaController(self.params)
        self._last_sync: float | None = None

    def decide(self, signals: Signals) -> Decision:
        p = self.params
        current = signals.current_replicas
        # The HPA controller only reconciles once per sync period.
        if self._last_sync is not None and signals.time - self._last_sync < p.sync_period_s:
            return Decision(current, "waiting for next HPA sync")
        self._last_sync = signals.time
        metric_replicas, terms = replicas_for_pods_metric(
            signals.replicas, p.metric, p.target_average_value, p.tolerance, current
        )
        return self.controller.reconcile(signals.time, current, metric_replicas, terms)
