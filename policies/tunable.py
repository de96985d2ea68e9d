"""Which policy parameters an offline search may move, and over what range.

A policy declares it on its own `Params` fields, so any policy, a third-party
plugin's included, is tunable with no change to the tuner::

    class MyParams(PolicyParams):
        target: Annotated[float, Tunable(1, 64, log=True)] = Field(8.0, gt=0)
        metric: Annotated[str, Tunable(choices=("waiting", "in_flight"))] = "waiting"

`search_space(MyParams)` then returns {"target": Tunable(...), "metric": Tunable(...)}.
A field without a `Tunable` keeps its value (its default, or what the user set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from policies.base import PolicyParams


@dataclass(frozen=True)
class Tunable:
    """A searchable range: [low, high] (log-scaled when `log`, whole numbers when `integer`),
    or one of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.choices:
            return
        if self.low is None or self.high is None:
            raise ValueError("Tunable needs low and high, or choices")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"Tunable range must be finite with low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled Tunable needs low > 0, got {self.low}")

    @property
    def categorical(self) -> bool:
        return bool(self.choices)

    def clip(self, value: float) -> float | int:
        """`value` moved into the range (whole when `integer`): for perturbing a chosen value."""
        assert self.low is not None and self.high is not None
        clipped = min(self.high, max(self.low, value))
        return round(clipped) if self.integer else clipped


def search_space(params_cls: type[PolicyParams]) -> dict[str, Tunable]:
    """The fields of `params_cls` that declare a `Tunable`, in declaration order."""
    space: dict[str, Tunable] = {}
    for name, field in params_cls.model_fields.items():
        marks = [m for m in field.metadata if isinstance(m, Tunable)]
        if marks:
            space[name] = marks[-1]
    return space
