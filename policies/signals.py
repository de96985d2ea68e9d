"""The snapshot a policy decides on.

A `Signals` value is everything a policy may know at one instant: the time
(passed in, never read from a clock), one sample per replica, fleet totals and
an arrival-rate estimate. It is built in exactly one place, `SignalsBuilder`
(`policies/builder.py`), by both the simulator and the live loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ReplicaState(StrEnum):
    """Lifecycle of one serving replica as the autoscaler sees it."""

    STARTING = "starting"  # created, not yet ready (node, image pull, model load)
    READY = "ready"  # serving traffic
    DRAINING = "draining"  # terminating: finishes in-flight work, takes no new requests


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """One replica at one instant.

    `scraped` is False when its metrics could not be read this tick; its
    load figures are then zero and must not be trusted (the fleet's
    `complete` flag is False as well).
    """

    name: str
    state: ReplicaState
    started_at: float  # when the replica was created (seconds, same clock as Signals.time)
    ready_at: float | None = None  # when it became ready, if known
    waiting: float = 0.0  # vllm:num_requests_waiting
    running: float = 0.0  # vllm:num_requests_running
    kv_cache_usage: float = 0.0  # vllm:kv_cache_usage_perc, 0..1
    scraped: bool = True
    ttft_s: float | None = None  # mean TTFT over the last interval
    generation_tokens_per_s: float | None = None
    completions_per_s: float | None = None  # finished requests per second

    @property
    def in_flight(self) -> float:
        return self.waiting + self.running


@dataclass(frozen=True, slots=True)
class Signals:
    """Everything a policy may know at `time`.

    Totals are over replicas whose metrics were read (`scraped`), so a
    missing replica lowers them: policies must check `complete` before
    trusting a low reading enough to scale down.
    """

    time: float
    replicas: tuple[ReplicaSample, ...]
    current_replicas: int  # replicas the scaler currently asks for (spec.replicas)
    total_waiting: float
    total_running: float
    ready_replicas: int
    starting_replicas: int
    draining_replicas: int
    mean_kv_cache_usage: float
    arrival_rate: float | None  # requests/s entering the fleet, None until two samples exist
    completion_rate: float | None  # requests/s finishing, None until two samples exist
    complete: bool  # every non-draining replica was read this tick
    missing: tuple[str, ...] = ()
    rejected_readings: tuple[str, ...] = ()  # "name: field=value" for NaN, Inf or negative readings
    data_age_s: float = 0.0  # how old the readings are (scrape lag)
    generation_tokens_per_s: float | None = None
    prefix_cache_hit_rate: float | None = None
    mean_ttft_s: float | None = None  # mean TTFT of requests that got a first token last interval
    mean_queue_wait_s: float | None = None  # mean time requests scheduled last interval waited
    prompt_tokens_per_s: float | None = None  # prompt tokens of requests that started, cached ones too
    first_tokens_per_s: float | None = None  # requests that got their first token, per second
    preemptions_per_s: float | None = None

    @property
    def total_in_flight(self) -> float:
        return self.total_waiting + self.total_running

    def starting(self) -> list[ReplicaSample]:
        return [r for r in self.replicas if r.state is ReplicaState.STARTING]
