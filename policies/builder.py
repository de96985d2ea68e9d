"""The one `Signals` builder, shared by the simulator and the live loop.

Both sides hand it what a scrape of vLLM's `/metrics` yields per replica
(gauges and cumulative counters, as `ReplicaReading`), and it turns those into
a `Signals` snapshot: fleet totals, per-replica rates from counter deltas with
reset handling, and the fleet arrival rate.

Arrival rate: vLLM has no arrivals counter, but every request that arrived
either finished (`request_success_total`, aborts included) or is still in the
server (`waiting + running`). So per replica, over one interval,
``arrivals = delta(finished) + delta(waiting + running)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from policies.signals import ReplicaSample, ReplicaState, Signals


@dataclass(slots=True)
class ReplicaReading:
    """What one scrape of one replica yielded. Counters are cumulative."""

    name: str
    state: ReplicaState
    started_at: float
    ready_at: float | None = None
    scraped: bool = True
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
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


@dataclass(slots=True)
class _Previous:
    time: float
    reading: ReplicaReading


def counter_delta(new: float | None, old: float | None) -> float | None:
    """Increase of a cumulative counter; a drop means the process restarted."""
    if new is None or old is None:
        return None
    if new < old:  # reset: the counter started again from zero
        return new
    return new - old


@dataclass(slots=True)
class _Rates:
    """Counter increases summed over the replicas read this tick (None-aware)."""

    prompt_tokens: float = 0.0
    first_tokens: float = 0.0
    preemptions: float = 0.0
    has_prompt: bool = False
    has_first: bool = False
    has_preemptions: bool = False

    def add(self, new: ReplicaReading, old: ReplicaReading) -> None:
        d = counter_delta(new.prompt_tokens, old.prompt_tokens)
        if d is not None:
            self.prompt_tokens += d
            self.has_prompt = True
        d = counter_delta(new.ttft_count, old.ttft_count)
        if d is not None:
            self.first_tokens += d
            self.has_first = True
        d = counter_delta(new.preemptions, old.preemptions)
        if d is not None:
            self.preemptions += d
            self.has_preemptions = True


_NUMBERS = ("waiting", "running", "kv_cache_usage", "requests_finished", "generation_tokens", "prompt_tokens",
            "preemptions", "ttft_sum", "ttft_count", "prefix_queries", "prefix_hits", "queue_sum", "queue_count")


def absurd(r: ReplicaReading) -> str | None:
    """Why a reading cannot be trusted (a non-finite or negative number), or None."""
    for name in _NUMBERS:
        v = getattr(r, name)
        if v is not None and not (math.isfinite(v) and v >= 0):
            return f"{name}={v}"
    return None


class SignalsBuilder:
    """Turns per-replica readings into `Signals`, remembering counters between calls."""

    def __init__(self) -> None:
        self._previous: dict[str, _Previous] = {}
        self._router_waiting: float | None = None
        self._last_time: float | None = None

    def build(
        self,
        time: float,
        readings: list[ReplicaReading],
        current_replicas: int,
        data_age_s: float = 0.0,
        router_waiting: float = 0.0,
    ) -> Signals:
        """`router_waiting`: requests held before any replica (an activator or gateway queue)."""
        samples: list[ReplicaSample] = []
        waiting = running = kv_sum = 0.0
        kv_n = 0
        ready = starting = draining = 0
        missing: list[str] = []
        arrivals = finished = tokens = 0.0
        counted = _Rates()
        ttft_sum = ttft_count = queries = hits = queue_sum = queue_count = 0.0
        rate_dt: float | None = None
        seen: set[str] = set()

        rejected: list[str] = []
        for r in readings:
            why = absurd(r) if r.scraped else None
            if why is not None:
                # NaN, Inf or a negative count never enters: the replica reads as unreadable.
                rejected.append(f"{r.name}: {why}")
                r = replace(r, scraped=False)
            seen.add(r.name)
            if r.state is ReplicaState.READY:
                ready += 1
            elif r.state is ReplicaState.STARTING:
                starting += 1
            else:
                draining += 1
            # A starting replica has no server to scrape yet; only a ready one counts as missing.
            if not r.scraped:
                if r.state is ReplicaState.READY:
                    missing.append(r.name)
                samples.append(
                    ReplicaSample(r.name, r.state, r.started_at, r.ready_at, scraped=False)
                )
                self._previous.pop(r.name, None)
                continue

            waiting += r.waiting
            running += r.running
            if r.state is not ReplicaState.STARTING:
                kv_sum += r.kv_cache_usage
                kv_n += 1

            completions_per_s = tokens_per_s = ttft_mean = None
            prev = self._previous.get(r.name)
            if prev is None and self._last_time is not None and r.started_at > self._last_time:
                # A replica born since our last look: all it has seen arrived in this interval.
                prev = _Previous(self._last_time, ReplicaReading(
                    r.name, r.state, r.started_at, requests_finished=0.0, generation_tokens=0.0,
                    prompt_tokens=0.0, preemptions=0.0,
                    ttft_sum=0.0, ttft_count=0.0, prefix_queries=0.0, prefix_hits=0.0,
                    queue_sum=0.0, queue_count=0.0))
            if prev is not None and time > prev.time:
                dt = time - prev.time
                rate_dt = dt if rate_dt is None else max(rate_dt, dt)
                d_fin = counter_delta(r.requests_finished, prev.reading.requests_finished)
                if d_fin is not None:
                    d_inflight = (r.waiting + r.running) - (
                        prev.reading.waiting + prev.reading.running
                    )
                    arrivals += d_fin + d_inflight
                    finished += d_fin
                    completions_per_s = d_fin / dt
                d_tok = counter_delta(r.generation_tokens, prev.reading.generation_tokens)
                if d_tok is not None:
                    tokens += d_tok
                    tokens_per_s = d_tok / dt
                counted.add(r, prev.reading)
                d_ts = counter_delta(r.ttft_sum, prev.reading.ttft_sum)
                d_tc = counter_delta(r.ttft_count, prev.reading.ttft_count)
                if d_ts is not None and d_tc:
                    ttft_sum += d_ts
                    ttft_count += d_tc
                    ttft_mean = d_ts / d_tc
                d_qs = counter_delta(r.queue_sum, prev.reading.queue_sum)
                d_qc = counter_delta(r.queue_count, prev.reading.queue_count)
                if d_qs is not None and d_qc:
                    queue_sum += d_qs
                    queue_count += d_qc
                d_q = counter_delta(r.prefix_queries, prev.reading.prefix_queries)
                d_h = counter_delta(r.prefix_hits, prev.reading.prefix_hits)
                if d_q and d_h is not None:
                    queries += d_q
                    hits += d_h
            self._previous[r.name] = _Previous(time, r)
            samples.append(
                ReplicaSample(
                    name=r.name,
                    state=r.state,
                    started_at=r.started_at,
                    ready_at=r.ready_at,
                    waiting=r.waiting,
                    running=r.running,
                    kv_cache_usage=r.kv_cache_usage,
                    scraped=True,
                    ttft_s=ttft_mean,
                    generation_tokens_per_s=tokens_per_s,
                    completions_per_s=completions_per_s,
                )
            )

        if not (math.isfinite(router_waiting) and router_waiting >= 0):
            rejected.append(f"router: waiting={router_waiting}")
            router_waiting = self._router_waiting or 0.0
        # Requests held at the router arrived too, though no replica has seen them yet.
        if rate_dt is not None and self._router_waiting is not None:
            arrivals += router_waiting - self._router_waiting
        self._router_waiting = router_waiting
        self._last_time = time

        # Forget replicas that are gone so a name reused later starts fresh.
        for name in list(self._previous):
            if name not in seen:
                del self._previous[name]

        return Signals(
            time=time,
            replicas=tuple(samples),
            current_replicas=current_replicas,
            total_waiting=waiting + router_waiting,
            total_running=running,
            ready_replicas=ready,
            starting_replicas=starting,
            draining_replicas=draining,
            mean_kv_cache_usage=kv_sum / kv_n if kv_n else 0.0,
            arrival_rate=max(0.0, arrivals) / rate_dt if rate_dt else None,
            completion_rate=finished / rate_dt if rate_dt else None,
            complete=not missing,
            missing=tuple(missing),
            rejected_readings=tuple(rejected),
            data_age_s=data_age_s,
            generation_tokens_per_s=tokens / rate_dt if rate_dt else None,
            prefix_cache_hit_rate=hits / queries if queries else None,
            mean_ttft_s=ttft_sum / ttft_count if ttft_count else None,
            mean_queue_wait_s=queue_sum / queue_count if queue_count else None,
            prompt_tokens_per_s=counted.prompt_tokens / rate_dt if rate_dt and counted.has_prompt else None,
            first_tokens_per_s=counted.first_tokens / rate_dt if rate_dt and counted.has_first else None,
            preemptions_per_s=counted.preemptions / rate_dt if rate_dt and counted.has_preemptions else None,
        )
