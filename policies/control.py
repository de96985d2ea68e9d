"""One control step, shared by the live loop and the simulator.

readings -> `SignalsBuilder` -> policy.decide -> `clamp`. Both sides call
`Controller.step`, so signals, decisions and clamps cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import Policy
from policies.builder import ReplicaReading, SignalsBuilder
from policies.clamp import ClampResult, ScaleLimits, clamp
from policies.decision import Decision
from policies.signals import Signals


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    signals: Signals
    decision: Decision
    clamp: ClampResult

    @property
    def desired(self) -> int:
        return self.clamp.desired


class Controller:
    def __init__(self, policy: Policy, limits: ScaleLimits) -> None:
        self.policy = policy
        self.limits = limits
        self.builder = SignalsBuilder()

    def step(
        self,
        time: float,
        readings: list[ReplicaReading],
        current_replicas: int,
        data_age_s: float = 0.0,
        router_waiting: float = 0.0,
    ) -> ControlOutcome:
        signals = self.builder.build(
            time, readings, current_replicas, data_age_s=data_age_s, router_waiting=router_waiting
        )
        decision = self.policy.decide(signals)
        return ControlOutcome(signals, decision, clamp(decision.desired_replicas, current_replicas, self.limits))
