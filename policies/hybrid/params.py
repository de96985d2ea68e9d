"""The hybrid policy's parameters; every default is meant to work on traffic it has not seen."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.base import PolicyParams
from policies.engine import EngineParams
from policies.tunable import Tunable


class ScheduleWindow(BaseModel):
    """Keep at least `replicas` warm between `start_hour` and `end_hour` (local time)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    start_hour: float = Field(ge=0, le=24)
    end_hour: float = Field(ge=0, le=24)
    replicas: int = Field(ge=0)
    weekdays: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)  # Monday = 0

    def active(self, epoch_s: float, utc_offset_hours: float) -> bool:
        local = epoch_s + utc_offset_hours * 3600
        days = math.floor(local / 86400)
        weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
        hour = (local - days * 86400) / 3600
        if weekday not in self.weekdays:
            return False
        if self.start_hour <= self.end_hour:
            return self.start_hour <= hour < self.end_hour
        return hour >= self.start_hour or hour < self.end_hour  # wraps midnight


class HybridParams(PolicyParams):
    # The warm baseline: how large depends on the traffic, so it is searched (up to the fleet's
    # ceiling: the tuner caps every min_replicas range below it).
    min_replicas: Annotated[int, Tunable(0, 10_000, integer=True)] = 1
    max_replicas: int = 50
    engine: EngineParams = Field(default_factory=EngineParams,
                                 description="a replica's step-time model: the prior for its capacity")
    target_utilization: Annotated[float, Tunable(0.5, 1.2)] = Field(0.9, gt=0, le=1.5, description="share of a replica's full-batch capacity sustained demand is planned at")
    demand_halflife_s: Annotated[float, Tunable(2, 60, log=True)] = Field(10.0, ge=0, description="smoothing of the demand now")
    level_window_s: Annotated[float, Tunable(60, 1800, log=True)] = Field(300.0, gt=0, description="the demand's level is its lower quartile over this window")
    trend_window_s: Annotated[float, Tunable(30, 600, log=True)] = Field(120.0, gt=0, description="the trend compares the demand's lower quartiles over windows this long")
    burst_quantile: Annotated[float, Tunable(0.5, 1.0)] = Field(0.9, ge=0, le=1, description="quantile of past bursts (peak above level within a cold start) kept warm")
    burst_history_s: float = Field(1800.0, gt=0, description="how far back bursts are remembered")
    mix_halflife_s: float = Field(60.0, gt=0, description="smoothing of the learned request sizes")
    prior_prompt_tokens: float = Field(1000.0, gt=0, description="mean prompt until measured")
    prior_output_tokens: float = Field(200.0, gt=0, description="mean output until measured")
    drain_target_s: Annotated[float, Tunable(15, 300, log=True)] = Field(60.0, gt=0, description="a backlog that outlasts a cold start is drained this long after it")
    default_cold_start_s: float = Field(180.0, ge=0)
    cold_start_min_observations: int = Field(3, ge=1)
    cold_start_quantile: float = Field(0.75, ge=0, le=1)
    schedule: tuple[ScheduleWindow, ...] = ()
    utc_offset_hours: float = Field(0.0, ge=-14, le=14)
    scale_down_stabilization_s: float | None = Field(
        None, ge=0, description="ready replicas are kept this long after they were last needed (None: one cold start)")
    min_history_s: float = Field(
        600.0, ge=0, description="no ready replica is released before demand was watched this long")
    scale_down_percent: Annotated[float, Tunable(5, 100, log=True)] = Field(25.0, gt=0, le=100, description="most of the fleet removed per period")
    scale_down_period_s: float = Field(30.0, gt=0)
    cancel_starting_after_s: float = Field(20.0, ge=0, description="a starting replica no longer needed this long is cancelled")

    @model_validator(mode="after")
    def _schedule_within_bounds(self) -> HybridParams:
        for w in self.schedule:
            if w.replicas > self.max_replicas:
                raise ValueError(f"schedule replicas {w.replicas} exceed max_replicas")
        return self
