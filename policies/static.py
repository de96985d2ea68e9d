"""Static provisioning: a fixed replica count, the simplest baseline."""

from __future__ import annotations

from pydantic import Field

from policies.base import Policy, PolicyParams
from policies.decision import Decision
from policies.signals import Signals


class StaticParams(PolicyParams):
    replicas: int = Field(2, ge=0)


class StaticPolicy(Policy):
    name = "static"
    Params = StaticParams
    params: StaticParams

    def decide(self, signals: Signals) -> Decision:
        return Decision(self.bounded(self.params.replicas), "static provisioning")
