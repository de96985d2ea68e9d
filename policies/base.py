"""The policy interface: `decide(signals) -> Decision`, with typed parameters.

A policy keeps its own windows and state but never reads a clock and never does
I/O: the time arrives in `Signals.time`, so the same object runs live and in
simulation, and the same sequence of signals always gives the same decisions.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from policies.decision import Decision
from policies.signals import Signals


class PolicyParams(BaseModel):
    """Base for every policy's parameters: unknown fields are errors, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_replicas: int = 0
    max_replicas: int = 100

    @model_validator(mode="after")
    def _bounds_ordered(self) -> PolicyParams:
        if self.min_replicas < 0:
            raise ValueError("min_replicas must be >= 0")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError("max_replicas must be >= max(1, min_replicas)")
        return self


class Policy:
    """Base class for scaling policies.

    Subclasses set `name` and `Params`, and implement `decide`.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[PolicyParams]] = PolicyParams

    def __init__(self, params: PolicyParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def decide(self, signals: Signals) -> Decision:  # pragma: no cover - interface
        raise NotImplementedError

    def bounded(self, replicas: int) -> int:
        """Clamp to this policy's [min_replicas, max_replicas]."""
        return max(self.params.min_replicas, min(self.params.max_replicas, replicas))

    def ceil_bounded(self, replicas: float, otherwise: int) -> int:
        """`ceil(replicas)` clamped to [min_replicas, max_replicas]; `otherwise` when it is not a
        finite number (a figure that should never have come in: hold, never guess)."""
        if not math.isfinite(replicas):
            return self.bounded(otherwise)
        return self.bounded(math.ceil(replicas - 1e-6))
