"""One replica's figures as its /metrics reports them: the one record every metric source
(the /metrics parser, the Prometheus source, the simulator's replica model) hands to the
`SignalsBuilder`. Counters are cumulative; None where the server does not report one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class ReplicaFigures:
    waiting: float = 0.0  # vllm:num_requests_waiting
    running: float = 0.0  # vllm:num_requests_running
    kv_cache_usage: float | None = None  # vllm:kv_cache_usage_perc, 0..1
    requests_finished: float | None = None  # vllm:request_success_total, summed
    generation_tokens: float | None = None  # vllm:generation_tokens_total
    prompt_tokens: float | None = None  # vllm:prompt_tokens_total (whole prompts, cached tokens too)
    preemptions: float | None = None  # vllm:num_preemptions_total
    ttft_sum: float | None = None  # vllm:time_to_first_token_seconds_sum
    ttft_count: float | None = None  # vllm:time_to_first_token_seconds_count
    prefix_queries: float | None = None  # vllm:prefix_cache_queries_total
    prefix_hits: float | None = None  # vllm:prefix_cache_hits_total
    queue_sum: float | None = None  # vllm:request_queue_time_seconds_sum
    queue_count: float | None = None  # vllm:request_queue_time_seconds_count
    itl_sum: float | None = None  # vllm:inter_token_latency_seconds_sum
    itl_count: float | None = None
    e2e_sum: float | None = None  # vllm:e2e_request_latency_seconds_sum
    e2e_count: float | None = None

    @property
    def in_flight(self) -> float:
        return self.waiting + self.running

    def absurd(self) -> str | None:
        """`field=value` for the first figure that is not a finite, sane number, else None."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                return f"{f.name}={v}"
        if self.kv_cache_usage is not None and self.kv_cache_usage > 1.0 + 1e-9:
            return f"kv_cache_usage={self.kv_cache_usage}"
        return None


# What a replica born since the last look had seen before it: nothing.
ZERO_COUNTERS = ReplicaFigures(
    requests_finished=0.0, generation_tokens=0.0, prompt_tokens=0.0, preemptions=0.0, ttft_sum=0.0,
    ttft_count=0.0, prefix_queries=0.0, prefix_hits=0.0, queue_sum=0.0, queue_count=0.0,
)
