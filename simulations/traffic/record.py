"""Rebuild a replayable trace from vLLM's metrics in Prometheus (`qscale record`).

What is read, per window of `step` seconds, as `sum(increase(NAME{selector}[step]))` through
the HTTP API's `query_range` (vLLM's names, shared/reference/wire-formats.md section 1; both
the `vllm:x` and the `vllm_x` spelling, as autoscaler/metrics/prometheus.py explains):

* How many requests: `vllm:request_success_total`, summed over `finished_reason` and over
  every series the selector matches. It is vLLM's request counter (one increment per
  finished request, whatever the reason it finished; an aborted request still came in), a
  true counter in every release, and the one the autoscaler itself reads. vLLM counts a
  request when it *finishes*, so its arrival was earlier by its end-to-end latency.
* The shift back to arrivals: the window's mean e2e latency,
  `vllm:e2e_request_latency_seconds_sum` / `_count` (observed at the same moment as the
  counter). Each window's arrivals are moved earlier by that mean, at most one step (so a
  written row is never overtaken by a later window's; pick a step above the typical latency).
* Lengths: `vllm:request_prompt_tokens_bucket` and `vllm:request_generation_tokens_bucket`,
  summed by `le`: the window's own distribution of prompt and output lengths, and their
  `_sum`: the window's exact total tokens (the summary prints both means).

How the trace is rebuilt (seeded: one generator, used window after window):

1. Counts: `increase()` extrapolates to the window's edges, so increases are not whole;
   a window's count is the step of the rounded running total (the total is off by <= 0.5).
2. Arrival times: the count's points uniform in the window, sorted (a Poisson process
   given its count), then shifted as above. Written in seconds from the range start (a
   request moved before it has a negative time; trace loaders start at the first arrival).
3. Lengths: a bucket is drawn with its share of the window's increase, then a whole number
   inside it, (lo, hi]: log-uniform as a start (vLLM's 1-2-5 bounds are log-spaced: a
   smooth length distribution is near 1/x inside one; the first bucket (0, hi] uniform),
   then bent toward the buckets' lower or upper ends (one exponent for the window, u**b in
   place of u) until the window's lengths sum to its exact total from `_sum`. So the
   buckets fix every quantile to within a bucket and the sums fix the token totals, what
   a replica's work is made of. The +Inf bucket gives the largest finite bound (vLLM's is
   max_model_len). Without a usable `_sum`, plain log-uniform.

Guards: a window where the counter has no series, or a non-finite or negative increase,
is skipped (no arrivals there; the summary counts them). A window with requests but no
histogram increase (extrapolation, or only aborted requests) takes the histogram of its
query piece (`CHUNK_WINDOWS` windows). Counter resets are left to `increase()`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policies.errors import UserError

CHUNK_WINDOWS = 720  # windows per query_range request (Prometheus answers at most 11,000 points)
REQUESTS = "vllm:request_success_total"
E2E = "vllm:e2e_request_latency_seconds"
PROMPT = "vllm:request_prompt_tokens"
OUTPUT = "vllm:request_generation_tokens"
HEADER = ("timestamp_s", "input_tokens", "output_tokens")  # the `generic` trace format
BEND_LOG2, BEND_STEPS = 8.0, 30  # the in-bucket bend is searched in [2**-8, 2**8], 30 halvings


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Histogram:
    """A histogram's increase over a window, per bucket (not cumulative)."""

    upper: np.ndarray  # bucket upper bounds (`le`), ascending; the last may be +inf
    mass: np.ndarray  # increase per bucket, >= 0

    @property
    def total(self) -> float:
        return float(self.mass.sum())

    @property
    def bounds(self) -> tuple[float, ...]:
        return tuple(self.upper.tolist())


@dataclass(frozen=True)
class WindowReading:
    """What Prometheus says about one window; None where it has nothing usable."""

    start_s: float  # epoch seconds; the window is [start_s, start_s + step)
    requests: float | None
    e2e_sum_s: float | None = None
    e2e_count: float | None = None
    prompt: Histogram | None = None
    output: Histogram | None = None
    prompt_sum: float | None = None
    output_sum: float | None = None


@dataclass(frozen=True)
class TimeRange:
    start_s: float  # epoch seconds, whole
    step_s: int
    windows: int

    @property
    def end_s(self) -> float:
        return self.start_s + self.step_s * self.windows


@dataclass
class Tally:
    """A running sum and count, for a mean."""

    total: float = 0.0
    count: float = 0.0

    def mean(self) -> str:
        return f"{self.total / self.count:.0f}" if self.count > 0 else "-"


@dataclass
class RecordSummary:
    requests: int = 0
    first_s: float | None = None  # arrival seconds from the range start
    last_s: float | None = None
    windows: int = 0
    skipped_windows: int = 0  # no data: no arrivals written there
    borrowed_windows: int = 0  # requests but no histogram increase: the piece's histogram
    prompt: Tally = field(default_factory=Tally)  # the rebuilt lengths
    output: Tally = field(default_factory=Tally)
    prompt_exact: Tally = field(default_factory=Tally)  # the histograms' _sum and count
    output_exact: Tally = field(default_factory=Tally)

    @property
    def span_s(self) -> float:
        return 0.0 if self.first_s is None or self.last_s is None else self.last_s - self.first_s

    def line(self, step_s: int) -> str:
        """One line: requests, span, mean rate, mean lengths beside the histograms' exact ones."""
        seconds = self.windows * step_s
        rate = self.requests / seconds if seconds else 0.0
        text = (f"recorded {self.requests} requests spanning {self.span_s:.0f} s, mean rate {rate:.3g} req/s "
                f"over {seconds} s ({self.windows} windows of {step_s} s); mean prompt "
                f"{self.prompt.mean()} tokens (histograms: {self.prompt_exact.mean()}), "
                f"mean output {self.output.mean()} (histograms: {self.output_exact.mean()})")
        if self.skipped_windows:
            text += f"; {self.skipped_windows} windows without data skipped (no arrivals there)"
        if self.borrowed_windows:
            text += f"; {self.borrowed_windows} windows without a length histogram took their piece's"
        return text


# --- pure steps -----------------------------------------------------------------------------


def usable(value: float | None) -> float | None:
    """An increase to use: finite and not negative (a tiny negative float error reads 0)."""
    if value is None or not math.isfinite(value) or value < -1e-6:
        return None
    return max(value, 0.0)


def histogram(cumulative: dict[float, float]) -> Histogram | None:
    """Per-bucket increases from cumulative `le -> increase`; None if nothing usable."""
    if not cumulative:
        return None
    upper = np.array(sorted(cumulative), dtype=np.float64)
    running = np.array([usable(cumulative[le]) or 0.0 for le in upper])
    running = np.maximum.accumulate(running)  # cumulative buckets never go down
    return Histogram(upper, np.diff(running, prepend=0.0))


def whole_counts(increases: Iterable[float], carried: float = 0.0) -> tuple[list[int], float]:
    """Whole counts whose running total stays within 0.5 of the increases' running total.
    `carried`: the running total so far (pieces continue one another); returns it updated."""
    counts = []
    for value in increases:
        before = round(carried)
        carried += value
        counts.append(round(carried) - before)
    return counts, carried


def window_arrivals(offset_s: float, step_s: float, n: int, shift_s: float,
                    rng: np.random.Generator) -> np.ndarray:
    """`n` Poisson arrivals in [offset_s, offset_s + step_s), moved `shift_s` earlier, sorted."""
    return np.sort(offset_s + step_s * rng.random(n)) - shift_s


def sample_lengths(hist: Histogram, n: int, rng: np.random.Generator,
                   mean: float | None = None) -> np.ndarray:
    """`n` whole lengths from a histogram: a bucket by its share, then a place inside it
    (see the top); with the exact `mean`, the places are bent to give that mean."""
    finite = hist.upper[np.isfinite(hist.upper)]
    if n == 0 or hist.total <= 0 or len(finite) == 0:
        raise ValueError("no histogram to sample from")
    bucket = rng.choice(len(hist.mass), size=n, p=hist.mass / hist.total)
    lower = np.concatenate(([0.0], hist.upper[:-1]))[bucket]
    upper = np.minimum(hist.upper[bucket], finite[-1])
    u = rng.random(n)
    bend = 1.0 if mean is None else _bend_for_total(lower, upper, u, mean * n, finite[-1])
    return place_in_buckets(lower, upper, u, bend, finite[-1])


def place_in_buckets(lower: np.ndarray, upper: np.ndarray, u: np.ndarray, bend: float,
                     top: float) -> np.ndarray:
    """Whole lengths in (lower, upper]: log-uniform at `bend` 1 (u ** bend: above 1 toward
    the lower bound, below toward the upper); the first bucket (0, upper] the same, linear;
    at or above `top` (the +Inf bucket), `top`."""
    t = u**bend
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.where(lower > 0, lower * (upper / lower) ** t, upper * t)
    values = np.clip(np.ceil(inside), np.floor(lower) + 1, np.maximum(np.floor(upper), 1))
    return np.where(lower >= top, top, values).astype(np.int64)


def _bend_for_total(lower: np.ndarray, upper: np.ndarray, u: np.ndarray, total: float,
                    top: float) -> float:
    """The bend whose lengths sum closest to `total` (bisection on log2 of it: the sum
    falls as the bend grows); beyond the buckets' reach, every length at the near end."""
    if place_in_buckets(lower, upper, u, 0.0, top).sum() <= total:
        return 0.0  # even every upper bound is short of it
    if place_in_buckets(lower, upper, u, math.inf, top).sum() >= total:
        return math.inf  # even every lower bound is past it
    low, high = -BEND_LOG2, BEND_LOG2
    for _ in range(BEND_STEPS):
        mid = (low + high) / 2
        if place_in_buckets(lower, upper, u, 2.0**mid, top).sum() > total:
            low = mid
        else:
            high = mid
    return 2.0 ** ((low + high) / 2)


def mean_shift(reading: WindowReading, step_s: float) -> float:
    """How much earlier than their finish the window's requests arrived: the mean e2e, <= step."""
    total, count = usable(reading.e2e_sum_s), usable(reading.e2e_count)
    if total is None or not count:
        return 0.0
    return min(total / count, step_s)


# --- rebuilding -----------------------------------------------------------------------------


@dataclass
class Rows:
    """Requests rebuilt so far and not yet written (arrival seconds from the range start)."""

    arrival: np.ndarray = field(default_factory=lambda: np.empty(0))
    prompt: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    output: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def add(self, arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray) -> None:
        self.arrival = np.concatenate((self.arrival, arrival))
        self.prompt = np.concatenate((self.prompt, prompt))
        self.output = np.concatenate((self.output, output))

    def take_before(self, until_s: float) -> Rows:
        """The rows that arrive before `until_s`, in time order; the rest stay."""
        order = np.argsort(self.arrival, kind="stable")
        cut = int(np.searchsorted(self.arrival[order], until_s))
        taken = Rows(*(a[order[:cut]] for a in (self.arrival, self.prompt, self.output)))
        self.arrival, self.prompt, self.output = (a[order[cut:]] for a in (self.arrival, self.prompt,
                                                                             self.output))
        return taken


def _piece_histograms(readings: list[WindowReading]) -> tuple[Histogram | None, Histogram | None]:
    """The piece's prompt and output histograms, summed over its windows (the fallback); if
    the buckets changed within the piece (replicas of another max_model_len), the bucket set
    with the most requests."""
    def total(name: str) -> Histogram | None:
        by_bounds: dict[tuple[float, ...], Histogram] = {}
        for r in readings:
            h = getattr(r, name)
            if h is not None and h.total > 0:
                seen = by_bounds.get(h.bounds)
                by_bounds[h.bounds] = h if seen is None else Histogram(h.upper, seen.mass + h.mass)
        return max(by_bounds.values(), key=lambda h: h.total, default=None)

    return total("prompt"), total("output")


def rebuild_piece(readings: list[WindowReading], trange: TimeRange, rng: np.random.Generator,
                  rows: Rows, summary: RecordSummary, carried: float) -> float:
    """Add the piece's requests to `rows` and count them in `summary`; returns the running total."""
    good = [r for r in readings if usable(r.requests) is not None]
    summary.windows += len(readings)
    summary.skipped_windows += len(readings) - len(good)
    counts, carried = whole_counts([usable(r.requests) or 0.0 for r in good], carried)
    fallback = _piece_histograms(good)
    for reading, n in zip(good, counts, strict=True):
        if n:
            _rebuild_window(reading, n, fallback, trange, rng, rows, summary)
    return carried


def _rebuild_window(reading: WindowReading, n: int, fallback: tuple[Histogram | None, Histogram | None],
                    trange: TimeRange, rng: np.random.Generator, rows: Rows, summary: RecordSummary) -> None:
    hists = []
    for own, spare, what in ((reading.prompt, fallback[0], PROMPT), (reading.output, fallback[1], OUTPUT)):
        hist = own if own is not None and own.total > 0 else spare
        if hist is None:
            raise UserError(f"no {what}_bucket increase where {REQUESTS} rose (near "
                            f"{iso_utc(reading.start_s)}): this vLLM or selector has no length histograms")
        hists.append(hist)
    if any(h is not own for h, own in zip(hists, (reading.prompt, reading.output), strict=True)):
        summary.borrowed_windows += 1
    arrival = window_arrivals(reading.start_s - trange.start_s, trange.step_s, n,
                              mean_shift(reading, trange.step_s), rng)
    prompt = sample_lengths(hists[0], n, rng, _exact_mean(reading.prompt, reading.prompt_sum, hists[0]))
    output = sample_lengths(hists[1], n, rng, _exact_mean(reading.output, reading.output_sum, hists[1]))
    rows.add(arrival, prompt, output)
    _count(summary, reading, arrival, prompt, output)


def _exact_mean(own: Histogram | None, total: float | None, used: Histogram) -> float | None:
    """The window's exact mean length (its histogram's `_sum` over its count), when the window's
    own histogram is the one sampled and both are there."""
    total = usable(total)
    if own is None or used is not own or total is None or own.total <= 0:
        return None
    return total / own.total


def _count(summary: RecordSummary, reading: WindowReading, arrival: np.ndarray, prompt: np.ndarray,
           output: np.ndarray) -> None:
    summary.requests += len(arrival)
    summary.first_s = min(float(arrival[0]), summary.first_s if summary.first_s is not None else math.inf)
    summary.last_s = max(float(arrival[-1]), summary.last_s if summary.last_s is not None else -math.inf)
    for rebuilt, lengths in ((summary.prompt, prompt), (summary.output, output)):
        rebuilt.total += float(lengths.sum())
        rebuilt.count += len(lengths)
    for exact, hist, total in ((summary.prompt_exact, reading.prompt, usable(reading.prompt_sum)),
                               (summary.output_exact, reading.output, usable(reading.output_sum))):
        if hist is not None and total is not None and hist.total > 0:
            exact.total += total
            exact.count += hist.total


def iso_utc(epoch_s: float) -> str:
    """2025-05-01T12:00:00Z."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the whole run --------------------------------------------------------------------------

Reader = Callable[[float, int], list[WindowReading]]  # (first window start, windows) -> readings


def record(read: Reader, trange: TimeRange, seed: int, out: Path,
           progress: Callable[[float], None] | None = None) -> RecordSummary:
    """Read the range piece by piece, rebuild its requests and write them to `out` (generic
    CSV, seconds from the range start), in time order. A UserError (nothing there, Prometheus
    gone) leaves no file behind."""
    try:
        summary = _record_into(out, read, trange, np.random.default_rng(seed), progress)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    if summary.skipped_windows == summary.windows:
        out.unlink()
        raise UserError(f"no {REQUESTS} data for the selector between {iso_utc(trange.start_s)} "
                        f"and {iso_utc(trange.end_s)}")
    return summary


def _record_into(out: Path, read: Reader, trange: TimeRange, rng: np.random.Generator,
                 progress: Callable[[float], None] | None) -> RecordSummary:
    rows, summary, carried = Rows(), RecordSummary(), 0.0
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for first in range(0, trange.windows, CHUNK_WINDOWS):
            n = min(CHUNK_WINDOWS, trange.windows - first)
            readings = read(trange.start_s + first * trange.step_s, n)
            carried = rebuild_piece(readings, trange, rng, rows, summary, carried)
            # The next window's arrivals are shifted at most one step: none comes before this.
            _write(writer, rows.take_before((first + n - 1) * trange.step_s))
            if progress is not None:
                progress(first + n)
        _write(writer, rows.take_before(math.inf))
    return summary


def _write(writer, rows: Rows) -> None:
    writer.writerows(zip((f"{t:.3f}" for t in rows.arrival), rows.prompt.tolist(), rows.output.tolist(),
                         strict=True))
