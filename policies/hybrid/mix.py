"""The request mix, learned from vLLM's metrics: mean prompt, output, prefix-cache hit share, and
the KV cache a running request holds (`vllm:kv_cache_usage_perc` x the cache's size / running).

Each mean is a ratio of two decayed sums (tokens over requests), so an interval
with many requests weighs more than a quiet one, and the estimate follows a
changing mix with a half-life of `halflife_s`.
"""

from __future__ import annotations

import math

from policies.engine import EngineParams
from policies.signals import Signals
from policies.windows import halflife_weight


class _DecayedRatio:
    def __init__(self, prior: float) -> None:
        self.prior = prior
        self.num = 0.0
        self.den = 0.0

    def add(self, keep: float, num: float, den: float) -> None:
        if not (math.isfinite(num) and math.isfinite(den) and num >= 0 and den >= 0):
            return  # a bad interval teaches nothing; it must not poison the mean for good
        self.num = keep * self.num + num
        self.den = keep * self.den + den

    @property
    def value(self) -> float:
        return self.num / self.den if self.den > 1e-9 else self.prior


class RequestMix:
    def __init__(self, halflife_s: float, prior_prompt: float, prior_output: float) -> None:
        self.halflife_s = halflife_s
        self.prompt = _DecayedRatio(prior_prompt)  # prompt tokens per started request
        self.output = _DecayedRatio(prior_output)  # generated tokens per finished request
        self.hit = _DecayedRatio(0.0)  # prefix-cache hits per queried token
        self.context = _DecayedRatio(0.0)  # KV tokens held per running request

    def observe(self, s: Signals, dt: float, kv_cache_tokens: int) -> None:
        if dt <= 0:
            return
        keep = 1.0 - halflife_weight(dt, self.halflife_s)
        if s.first_tokens_per_s and s.prompt_tokens_per_s is not None:
            self.prompt.add(keep, s.prompt_tokens_per_s * dt, s.first_tokens_per_s * dt)
        if s.completion_rate and s.generation_tokens_per_s:  # 0 tokens: a source without the counter
            self.output.add(keep, s.generation_tokens_per_s * dt, s.completion_rate * dt)
        if s.ready_replicas and s.total_running >= s.ready_replicas:
            held = s.mean_kv_cache_usage * kv_cache_tokens * s.ready_replicas
            self.context.add(keep, held * dt, s.total_running * dt)
        if s.prefix_cache_hit_rate is not None and s.prompt_tokens_per_s:
            weight = s.prompt_tokens_per_s * dt
            self.hit.add(keep, s.prefix_cache_hit_rate * weight, weight)

    def request_seconds(self, engine: EngineParams) -> float:
        """Replica-seconds the mean request costs on `engine`."""
        prompt = self.prompt.value
        computed = prompt * (1.0 - min(max(self.hit.value, 0.0), 1.0))
        return engine.request_seconds(prompt, computed, self.output.value, self.context.value)
