"""The clairvoyant oracle: a lower bound on GPU-hours (simulation only).

It reads the whole trace ahead of time and knows the cold start (the model's
upper bound), so it can order each replica exactly one cold start before the
demand that needs it and release it as soon as that demand has passed.

Demand is measured in replica-seconds of engine work per time bucket, using
the same performance profile as the replicas: a request costs its prefill
(`prefill_token_s x prompt`) plus its share of decode steps at the batch the
KV cache allows (`output x step(B) / B`). A bucket needs
ceil(work / (bucket x utilization)) replicas.

"Fewest replicas that keep the SLO" is found by search: `search_utilization`
runs the oracle at decreasing utilizations and keeps the first (cheapest) one
whose SLO attainment reaches the target. This is a reference point, not a
proof of optimality: a smarter placement could do slightly better.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from policies import Decision, Policy, PolicyParams, Signals
from simulations.profile import PerformanceProfile
from simulations.traffic import TraceChunk


class DemandProfile:
    """Engine work per bucket, from one streaming pass over the traffic."""

    def __init__(self, chunks: Iterator[TraceChunk], profile: PerformanceProfile, bucket_s: float = 10.0) -> None:
        self.bucket_s = bucket_s
        prompt_sum: dict[int, float] = {}
        output_sum: dict[int, float] = {}
        n = 0
        tokens = 0.0
        for c in chunks:
            if not len(c):
                continue
            b = (c.arrival // bucket_s).astype(np.int64)
            for arr, acc in ((c.prompt, prompt_sum), (c.output, output_sum)):
                sums = np.bincount(b - b[0], weights=arr)
                for i, v in enumerate(sums):
                    if v:
                        acc[int(b[0]) + i] = acc.get(int(b[0]) + i, 0.0) + float(v)
            n += len(c)
            tokens += float(c.prompt.sum() + c.output.sum() / 2)
        size = (max(prompt_sum) + 1) if prompt_sum else 1
        prompts = np.zeros(size)
        outputs = np.zeros(size)
        for k, v in prompt_sum.items():
            prompts[k] = v
        for k, v in output_sum.items():
            outputs[k] = v
        mean_ctx = tokens / n if n else 1.0
        batch = max(1, min(profile.max_num_seqs, int(profile.kv_capacity_tokens / (1.2 * mean_ctx))))
        step = profile.step_time(0, batch, batch * mean_ctx)
        self.batch = batch
        work = profile.prefill_token_s * prompts + outputs * step / batch
        # A request's work spans more than its arrival bucket: smooth over neighbours.
        padded = np.concatenate([[0.0], work, [0.0]])
        self.work = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])

    def needed(self, utilization: float) -> np.ndarray:
        return np.ceil(self.work / (self.bucket_s * utilization) - 1e-9).astype(np.int64)


class OracleParams(PolicyParams):
    min_replicas: int = 0
    max_replicas: int = 1000


class OraclePolicy(Policy):
    """Knows the future: holds max(needed) over [now, now + cold start]."""

    name = "oracle"
    Params = OracleParams

    def __init__(self, demand: DemandProfile, lead_s: float, utilization: float,
                 params: OracleParams | None = None) -> None:
        super().__init__(params)
        self.need = demand.needed(utilization)
        self.bucket_s = demand.bucket_s
        self.lead_s = lead_s
        self.utilization = utilization

    def decide(self, signals: Signals) -> Decision:
        b0 = int(signals.time // self.bucket_s)
        b1 = int((signals.time + self.lead_s) // self.bucket_s) + 1
        window = self.need[max(0, b0):max(0, b1)]
        desired = int(window.max()) if len(window) else 0
        return Decision(self.bounded(desired), "clairvoyant", {"lead_s": self.lead_s,
                                                                 "utilization": self.utilization})

    def initial(self) -> int:
        return int(self.need[:2].max()) if len(self.need) else 0


UTILIZATIONS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def search_utilization(
    run: Callable[[OraclePolicy], object],
    demand: DemandProfile,
    lead_s: float,
    slo_target: float,
    attainment: Callable[[object], float],
) -> tuple[object, float]:
    """Cheapest oracle run (highest utilization) whose SLO attainment reaches `slo_target`."""
    best: tuple[object, float] | None = None
    for u in UTILIZATIONS:
        result = run(OraclePolicy(demand, lead_s, u))
        if best is None or attainment(result) > attainment(best[0]):
            best = (result, u)
        if attainment(result) >= slo_target:
            return result, u
    assert best is not None
    return best


def initial_replicas(demand: DemandProfile, lead_s: float, utilization: float = 0.5) -> int:
    """The warm fleet every compared policy starts with: enough for the demand of the first
    cold start, since nothing ordered at t=0 is ready before then (as a deployment that
    was already running would have)."""
    need = demand.needed(utilization)
    first = need[: int(lead_s // demand.bucket_s) + 2]
    return max(1, int(first.max())) if len(first) else 1
