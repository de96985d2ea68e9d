"""The one clamp applied to every policy decision, live and in simulation.

A policy says what it wants; the target's limits say what is allowed. Both the
live loop and the simulator call `clamp` (never a copy of it), so a decision
that is clamped in production is clamped the same way offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScaleLimits(BaseModel):
    """Per-target guard rails, independent of the policy."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(100, ge=1)
    max_scale_up_step: int | None = Field(None, ge=1, description="most replicas added per tick")
    max_scale_down_step: int | None = Field(None, ge=1, description="most replicas removed per tick")

    @model_validator(mode="after")
    def _ordered(self) -> ScaleLimits:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


@dataclass(frozen=True, slots=True)
class ClampResult:
    desired: int  # what the scaler should write
    requested: int  # what the policy asked for
    applied: tuple[str, ...] = field(default=())  # which limits changed it

    @property
    def clamped(self) -> bool:
        return bool(self.applied)


def clamp(requested: int, current: int, limits: ScaleLimits) -> ClampResult:
    desired = requested
    applied: list[str] = []
    if limits.max_scale_up_step is not None and desired > current + limits.max_scale_up_step:
        desired = current + limits.max_scale_up_step
        applied.append(f"max_scale_up_step={limits.max_scale_up_step}")
    if limits.max_scale_down_step is not None and desired < current - limits.max_scale_down_step:
        desired = current - limits.max_scale_down_step
        applied.append(f"max_scale_down_step={limits.max_scale_down_step}")
    if desired > limits.max_replicas:
        desired = limits.max_replicas
        applied.append(f"max_replicas={limits.max_replicas}")
    if desired < limits.min_replicas:
        desired = limits.min_replicas
        applied.append(f"min_replicas={limits.min_replicas}")
    return ClampResult(desired=desired, requested=requested, applied=tuple(applied))
