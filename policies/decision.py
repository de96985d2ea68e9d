"""What a policy answers: desired replicas, a short reason, and the terms behind it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's recommendation.

    `terms` holds the named quantities that produced the number (for logs and
    `qscale explain`-style output), e.g. ``{"forecast_replicas": 7, "baseline": 2}``.
    """

    desired_replicas: int
    reason: str
    terms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.desired_replicas < 0:
            raise ValueError(f"desired_replicas must be >= 0, got {self.desired_replicas}")
