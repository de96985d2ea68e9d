"""How long a new replica takes to become ready: node provisioning + image pull + model load.

A replica lands on a warm node (one a replica left less than `node_keepalive_s`
ago, image cached) when one is free: then only the model loads. Otherwise a new
node is provisioned, the image pulled, and the model loaded. Defaults: about
60 s on a warm node, 2 to 4 minutes with a new node.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    value: float = Field(0.0, ge=0)  # fixed
    low: float = Field(0.0, ge=0)  # uniform
    high: float = Field(0.0, ge=0)
    median: float = Field(0.0, ge=0)  # lognormal
    sigma: float = Field(0.0, ge=0)

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        return float(rng.lognormal(np.log(max(self.median, 1e-9)), self.sigma))

    def upper(self) -> float:
        """A high value: the max, or the 99th percentile of a lognormal."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return self.high
        return float(self.median * np.exp(2.326 * self.sigma))


def fixed(v: float) -> Distribution:
    return Distribution(kind="fixed", value=v)


def uniform(lo: float, hi: float) -> Distribution:
    return Distribution(kind="uniform", low=lo, high=hi)


class ColdStartModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    node_provision: Distribution = uniform(60, 120)
    image_pull: Distribution = uniform(20, 40)
    model_load: Distribution = uniform(50, 70)
    warm_nodes: int = Field(0, ge=0, description="spare warm nodes at the start")
    node_keepalive_s: float = Field(600.0, ge=0, description="a freed node stays warm this long")

    @classmethod
    def fixed_total(cls, seconds: float) -> ColdStartModel:
        """Every start takes exactly `seconds` (the `--cold-start` flag)."""
        return cls(node_provision=fixed(0), image_pull=fixed(0), model_load=fixed(seconds))

    def sample(self, rng: np.random.Generator, warm_node: bool) -> float:
        load = self.model_load.sample(rng)
        if warm_node:
            return load
        return self.node_provision.sample(rng) + self.image_pull.sample(rng) + load

    def upper(self) -> float:
        return self.node_provision.upper() + self.image_pull.upper() + self.model_load.upper()
