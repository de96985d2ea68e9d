"""A port of KEDA's ScaledObject on top of the HPA.

KEDA splits scaling in two, and so does this port:

* the KEDA operator polls the scaler every `polling_interval_s` (30 s) and owns
  0 <-> 1: activate (to max(1, min_replica_count)) when the metric exceeds the
  activation threshold; after `cooldown_period_s` (300 s) without activity,
  return to min_replica_count (0 allowed);
* between 1 and max, a KEDA-generated HPA (minReplicas = max(1, minReplicaCount))
  scales on the metric as an External metric with an AverageValue target:
  desired = ceil(sum / target), with the 10 % tolerance measured against the
  current pod count, and the HPA's default behavior and 15 s sync.

The metric is a fleet sum, as a Prometheus query like
`sum(vllm:num_requests_waiting)` returns it.

Not modelled: `idleReplicaCount`, `fallback` (the control step's outage rules play that
part for every policy) and `initialCooldownPeriod`; the value is read directly rather than
through KEDA's metrics adapter and its cache.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from policies.base import Policy
from policies.decision import Decision
from policies.hpa import HpaBehaviorParams, HpaController
from policies.signals import Signals
from policies.tunable import Tunable

FleetMetric = Literal["waiting", "running", "in_flight"]


def fleet_metric(signals: Signals, metric: FleetMetric) -> float:
    if metric == "waiting":
        return signals.total_waiting
    if metric == "running":
        return signals.total_running
    return signals.total_in_flight


class KedaParams(HpaBehaviorParams):
    min_replicas: int = Field(0, description="minReplicaCount; 0 allows scale to zero")
    max_replicas: int = Field(100, description="maxReplicaCount")
    metric: Annotated[FleetMetric, Tunable(choices=("waiting", "in_flight"))] = "waiting"
    target_average_value: Annotated[float, Tunable(0.25, 512, log=True)] = Field(
        5.0, gt=0, description="threshold per replica")
    activation_threshold: float = Field(0.0, ge=0, description="active when metric > this")
    polling_interval_s: Annotated[float, Tunable(5, 60, log=True)] = Field(30.0, gt=0)
    cooldown_period_s: Annotated[float, Tunable(30, 900, log=True)] = Field(300.0, ge=0)


def replicas_for_external_metric(
    usage: float, target_per_pod: float, status_replicas: int, tolerance: float
) -> tuple[int, dict[str, float]]:
    """GetExternalPerPodMetricReplicas: tolerance against the current pod count."""
    terms = {"metric_value": usage}
    if status_replicas <= 0:
        return math.ceil(usage / target_per_pod), terms
    usage_ratio = usage / (target_per_pod * status_replicas)
    terms["usage_ratio"] = usage_ratio
    if abs(1.0 - usage_ratio) > tolerance:
        return math.ceil(usage / target_per_pod), terms
    return status_replicas, terms


class KedaPolicy(Policy):
    """KEDA ScaledObject: activation and cooldown around a KEDA-managed HPA."""

    name = "keda"
    Params = KedaParams
    params: KedaParams

    def __init__(self, params: KedaParams | None = None) -> None:
        super().__init__(params)
        # The generated HPA never goes below 1: KEDA itself owns zero.
        hpa_params = self.params.model_copy(update={"min_replicas": max(1, self.params.min_replicas)})
        self.hpa = HpaController(hpa_params)
        self._last_poll: float | None = None
        self._last_hpa_sync: float | None = None
        self._last_active: float | None = None

    def decide(self, signals: Signals) -> Decision:
        p = self.params
        now, current = signals.time, signals.current_replicas
        value = fleet_metric(signals, p.metric)

        # The operator's polling loop: activation and cooldown.
        if self._last_poll is None or now - self._last_poll >= p.polling_interval_s:
            self._last_poll = now
            decision = self._operator_poll(now, current, value)
            if decision is not None:
                return decision

        # The HPA's own sync loop; disabled while the workload is at zero.
        if current == 0:
            return Decision(0, "inactive: at zero, waiting for activation", {"metric_value": value})
        if self._last_hpa_sync is not None and now - self._last_hpa_sync < p.sync_period_s:
            return Decision(current, "waiting for next HPA sync")
        self._last_hpa_sync = now
        status_replicas = signals.ready_replicas + signals.starting_replicas
        metric_replicas, terms = replicas_for_external_metric(
            value, p.target_average_value, status_replicas or current, p.tolerance
        )
        return self.hpa.reconcile(now, current, metric_replicas, terms)

    def _operator_poll(self, now: float, current: int, value: float) -> Decision | None:
        """One pass of KEDA's scale loop; None when the HPA should decide."""
        p = self.params
        terms = {"metric_value": value, "activation_threshold": p.activation_threshold}
        active = value > p.activation_threshold
        if active:
            self._last_active = now
            if current == 0:
                # Activate from zero; the HPA takes over from here.
                return Decision(max(1, p.min_replicas), "activated: metric above threshold", terms)
            return None
        if current > 0 and p.min_replicas == 0:
            # Scale to zero only after the cooldown since the last activity.
            since = now - self._last_active if self._last_active is not None else math.inf
            if since >= p.cooldown_period_s:
                return Decision(0, "inactive past cooldown: scaling to zero", terms)
            return None
        if current < p.min_replicas:
            return Decision(p.min_replicas, "below minReplicaCount", terms)
        return None
