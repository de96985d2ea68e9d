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
from dataclasses import dataclass, field

from policies.figures import ZERO_COUNTERS, ReplicaFigures
from policies.signals import ReplicaSample, ReplicaState, Signals


@dataclass(frozen=True, slots=True)
class ReplicaReading:
    """One replica at one tick: who it is, and its figures (None: it could not be read)."""

    name: str
    state: ReplicaState
    started_at: float
    ready_at: float | None = None
    figures: ReplicaFigures | None = None

    @property
    def scraped(self) -> bool:
        return self.figures is not None


def counter_delta(new: float | None, old: float | None) -> float | None:
    """Increase of a cumulative counter; a drop means the process restarted."""
    if new is None or old is None:
        return None
    if new < old:  # reset: the counter started again from zero
        return new
    return new - old


@dataclass(slots=True)
class _Sum:
    """A sum over replicas that stays None until some replica contributed."""

    value: float = 0.0
    seen: bool = False

    def add(self, d: float | None) -> None:
        if d is not None:
            self.value += d
            self.seen = True

    def per(self, dt: float | None) -> float | None:
        return self.value / dt if dt and self.seen else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass(slots=True)
class _Fleet:
    """What one tick accumulates over the replicas."""

    waiting: float = 0.0
    running: float = 0.0
    kv_sum: float = 0.0
    kv_n: int = 0
    ready: int = 0
    starting: int = 0
    draining: int = 0
    arrivals: float = 0.0
    finished: float = 0.0
    rate_dt: float | None = None
    missing: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    samples: list[ReplicaSample] = field(default_factory=list)
    tokens: _Sum = field(default_factory=_Sum)
    prompt_tokens: _Sum = field(default_factory=_Sum)
    first_tokens: _Sum = field(default_factory=_Sum)
    preemptions: _Sum = field(default_factory=_Sum)
    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    queue_sum: float = 0.0
    queue_count: float = 0.0
    queries: float = 0.0
    hits: float = 0.0

    def count(self, state: ReplicaState) -> None:
        if state is ReplicaState.READY:
            self.ready += 1
        elif state is ReplicaState.STARTING:
            self.starting += 1
        else:
            self.draining += 1


@dataclass(slots=True)
class _Interval:
    """One replica's counter increases since its previous reading."""

    dt: float
    new: ReplicaFigures
    old: ReplicaFigures

    def delta(self, name: str) -> float | None:
        return counter_delta(getattr(self.new, name), getattr(self.old, name))

    def mean(self, sum_name: str, count_name: str) -> tuple[float, float] | None:
        s, c = self.delta(sum_name), self.delta(count_name)
        return (s, c) if s is not None and c else None


class SignalsBuilder:
    """Turns per-replica readings into `Signals`, remembering counters between calls."""

    def __init__(self) -> None:
        self._previous: dict[str, tuple[float, ReplicaFigures]] = {}
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
        fleet = _Fleet()
        for r in readings:
            fleet.count(r.state)
            figures = self._admit(r, fleet)
            if figures is None:
                fleet.samples.append(ReplicaSample(r.name, r.state, r.started_at, r.ready_at, scraped=False))
                self._previous.pop(r.name, None)
                continue
            fleet.samples.append(self._read(time, r, figures, fleet))
            self._previous[r.name] = (time, figures)
        router_waiting = self._router(router_waiting, fleet)
        self._last_time = time
        seen = {r.name for r in readings}
        for name in [n for n in self._previous if n not in seen]:
            del self._previous[name]  # gone: a name reused later starts fresh
        return self._signals(time, fleet, current_replicas, data_age_s, router_waiting)

    @staticmethod
    def _admit(r: ReplicaReading, fleet: _Fleet) -> ReplicaFigures | None:
        """The reading's figures, or None if it was not read or cannot be trusted."""
        figures = r.figures
        why = figures.absurd() if figures is not None else None
        if why is not None:
            # NaN, Inf or a negative count never enters: the replica reads as unreadable.
            fleet.rejected.append(f"{r.name}: {why}")
            figures = None
        # A starting replica has no server to scrape yet; only a ready one counts as missing.
        if figures is None and r.state is ReplicaState.READY:
            fleet.missing.append(r.name)
        return figures

    def _interval(self, time: float, r: ReplicaReading, figures: ReplicaFigures) -> _Interval | None:
        prev = self._previous.get(r.name)
        if prev is None and self._last_time is not None and r.started_at > self._last_time:
            # A replica born since our last look: all it has seen arrived in this interval.
            prev = (self._last_time, ZERO_COUNTERS)
        if prev is None or time <= prev[0]:
            return None
        return _Interval(time - prev[0], figures, prev[1])

    def _read(self, time: float, r: ReplicaReading, f: ReplicaFigures, fleet: _Fleet) -> ReplicaSample:
        fleet.waiting += f.waiting
        fleet.running += f.running
        if r.state is not ReplicaState.STARTING:
            fleet.kv_sum += f.kv_cache_usage or 0.0
            fleet.kv_n += 1
        interval = self._interval(time, r, f)
        completions_per_s = tokens_per_s = ttft_mean = None
        if interval is not None:
            completions_per_s, tokens_per_s, ttft_mean = _add_interval(interval, fleet)
        return ReplicaSample(
            name=r.name, state=r.state, started_at=r.started_at, ready_at=r.ready_at, waiting=f.waiting,
            running=f.running, kv_cache_usage=f.kv_cache_usage or 0.0, scraped=True, ttft_s=ttft_mean,
            generation_tokens_per_s=tokens_per_s, completions_per_s=completions_per_s,
        )

    def _router(self, router_waiting: float, fleet: _Fleet) -> float:
        if not (math.isfinite(router_waiting) and router_waiting >= 0):
            fleet.rejected.append(f"router: waiting={router_waiting}")
            router_waiting = self._router_waiting or 0.0
        # Requests held at the router arrived too, though no replica has seen them yet.
        if fleet.rate_dt is not None and self._router_waiting is not None:
            fleet.arrivals += router_waiting - self._router_waiting
        self._router_waiting = router_waiting
        return router_waiting

    @staticmethod
    def _signals(time: float, fleet: _Fleet, current: int, data_age_s: float, router_waiting: float) -> Signals:
        dt = fleet.rate_dt
        return Signals(
            time=time, replicas=tuple(fleet.samples), current_replicas=current,
            total_waiting=fleet.waiting + router_waiting, total_running=fleet.running,
            ready_replicas=fleet.ready, starting_replicas=fleet.starting, draining_replicas=fleet.draining,
            mean_kv_cache_usage=fleet.kv_sum / fleet.kv_n if fleet.kv_n else 0.0,
            arrival_rate=max(0.0, fleet.arrivals) / dt if dt else None,
            completion_rate=fleet.finished / dt if dt else None,
            complete=not fleet.missing, missing=tuple(fleet.missing), rejected_readings=tuple(fleet.rejected),
            data_age_s=data_age_s, generation_tokens_per_s=fleet.tokens.per(dt),
            prefix_cache_hit_rate=_ratio(fleet.hits, fleet.queries),
            mean_ttft_s=_ratio(fleet.ttft_sum, fleet.ttft_count),
            mean_queue_wait_s=_ratio(fleet.queue_sum, fleet.queue_count),
            prompt_tokens_per_s=fleet.prompt_tokens.per(dt), first_tokens_per_s=fleet.first_tokens.per(dt),
            preemptions_per_s=fleet.preemptions.per(dt),
        )


def _add_interval(i: _Interval, fleet: _Fleet) -> tuple[float | None, float | None, float | None]:
    """Adds one replica's counter increases to the fleet; returns its completions/s, tokens/s and
    mean TTFT over the interval."""
    fleet.rate_dt = i.dt if fleet.rate_dt is None else max(fleet.rate_dt, i.dt)
    completions_per_s = tokens_per_s = ttft_mean = None
    d_fin = i.delta("requests_finished")
    if d_fin is not None:
        fleet.arrivals += d_fin + i.new.in_flight - i.old.in_flight
        fleet.finished += d_fin
        completions_per_s = d_fin / i.dt
    d_tok = i.delta("generation_tokens")
    fleet.tokens.add(d_tok)
    if d_tok is not None:
        tokens_per_s = d_tok / i.dt
    fleet.prompt_tokens.add(i.delta("prompt_tokens"))
    fleet.first_tokens.add(i.delta("ttft_count"))
    fleet.preemptions.add(i.delta("preemptions"))
    if (ttft := i.mean("ttft_sum", "ttft_count")) is not None:
        fleet.ttft_sum += ttft[0]
        fleet.ttft_count += ttft[1]
        ttft_mean = ttft[0] / ttft[1]
    if (queue := i.mean("queue_sum", "queue_count")) is not None:
        fleet.queue_sum += queue[0]
        fleet.queue_count += queue[1]
    d_q, d_h = i.delta("prefix_queries"), i.delta("prefix_hits")
    if d_q and d_h is not None:
        fleet.queries += d_q
        fleet.hits += d_h
    return completions_per_s, tokens_per_s, ttft_mean
