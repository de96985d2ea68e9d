"""Learns how long a replica takes from created to ready, from what the fleet shows."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from policies.signals import ReplicaState, Signals


class ColdStartEstimator:
    """Observed starting-to-ready durations; a configured default until enough are seen.

    A replica is timed once: from its `started_at` to its `ready_at` (or, when
    the source does not report `ready_at`, the first time it is seen ready).
    Replicas already ready when first seen are not timed.
    """

    def __init__(
        self, default_s: float, min_observations: int, quantile: float, keep: int = 50
    ) -> None:
        self.default_s = default_s
        self.min_observations = min_observations
        self.quantile = quantile
        self.observations: deque[float] = deque(maxlen=keep)
        self._starting: dict[str, float] = {}

    def observe(self, signals: Signals) -> None:
        for r in signals.replicas:
            if r.state is ReplicaState.STARTING:
                self._starting.setdefault(r.name, r.started_at)
            elif r.name in self._starting:
                started = self._starting.pop(r.name)
                if r.state is ReplicaState.READY:
                    ready_at = r.ready_at if r.ready_at is not None else signals.time
                    took = ready_at - started
                    if math.isfinite(took):
                        self.observations.append(max(0.0, took))
        # Replicas that vanished while starting were never timed.
        names = {r.name for r in signals.replicas}
        for name in [n for n in self._starting if n not in names]:
            del self._starting[name]

    @property
    def learned(self) -> bool:
        return len(self.observations) >= self.min_observations

    def estimate(self) -> float:
        if not self.learned:
            return self.default_s
        return float(np.quantile(np.fromiter(self.observations, float), self.quantile))
