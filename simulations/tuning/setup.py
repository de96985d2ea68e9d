"""What every worker of one study shares, stored in the study itself so `--worker` needs
only the storage and the study name."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from policies import ScaleLimits
from simulations.coldstart import ColdStartModel
from simulations.profile import load_profile
from simulations.runner import SimConfig
from simulations.tuning.parts import TraceSpec

SETUP_ATTR = "qscale_setup"


class StudySetup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    policy: str
    fixed: dict[str, Any] = {}
    traces: tuple[TraceSpec, ...]
    holdout: float = Field(0.3, ge=0, lt=1)
    slo_target: float = Field(0.99, gt=0, le=1)
    slo_ttft_s: float = Field(2.0, gt=0)
    profile: str = "llama3-8b-h100"
    cold_start_s: float | None = Field(None, ge=0)  # None: the profile's node + pull + load model
    max_replicas: int = Field(100, ge=1)
    tick_s: float = Field(2.0, gt=0)
    gpu_hour_price: float = Field(2.5, ge=0)
    trials: int = Field(50, ge=1)
    seed: int = 0

    def sim_config(self) -> SimConfig:
        cold = ColdStartModel.fixed_total(self.cold_start_s) if self.cold_start_s is not None else ColdStartModel()
        return SimConfig(profile=load_profile(self.profile), cold_start=cold, slo_ttft_s=self.slo_ttft_s,
                         limits=ScaleLimits(min_replicas=0, max_replicas=self.max_replicas),
                         tick_s=self.tick_s, gpu_hour_price=self.gpu_hour_price, seed=self.seed)

    def same_search(self, other: StudySetup) -> bool:
        """Could trials of `other` sit in the same study (everything but the trial budget)?"""
        return self.model_dump(exclude={"trials"}) == other.model_dump(exclude={"trials"})
