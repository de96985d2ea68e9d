"""Stream transforms: time slicing and rate scaling, chunk by chunk."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from policies.errors import UserError
from simulations.traffic.loaders import CHUNK_ROWS, TraceChunk


def time_slice(chunks: Iterator[TraceChunk], start_s: float, duration_s: float | None) -> Iterator[TraceChunk]:
    """Keep arrivals in [start, start + duration), re-based to start at 0. A start past the
    trace's last arrival is a one-line error saying where the trace ends."""
    end = math.inf if duration_s is None else start_s + duration_s
    last: float | None = None
    for c in chunks:
        if len(c) == 0:
            continue
        if c.arrival[0] >= end:
            return
        last = float(c.arrival[-1])
        keep = (c.arrival >= start_s) & (c.arrival < end)
        if keep.any():
            yield _take(c, keep, -start_s)
    if last is not None and last < start_s:
        raise UserError(f"the trace ends at {last:.2f} s, before the slice start {start_s:g} s")


def _take(c: TraceChunk, select: np.ndarray, shift: float = 0.0) -> TraceChunk:
    """Rows chosen by a boolean mask or an index array (in that order)."""
    idx = np.flatnonzero(select) if select.dtype == bool else select
    hashes = [c.hashes[i] for i in idx] if c.hashes is not None else None
    return TraceChunk(c.arrival[idx] + shift, c.prompt[idx], c.output[idx], hashes)


def scale_rate(
    chunks: Iterator[TraceChunk], factor: float, jitter_s: float = 10.0, seed: int = 0
) -> Iterator[TraceChunk]:
    """Scale the arrival rate by `factor`, keeping the trace's duration and shape.

    Each request is kept floor(factor) times plus once more with probability
    frac(factor); copies after the first are shifted by up to `jitter_s`
    seconds. Read as "factor times as many users behaving the same way": the
    rate curve scales, bursts scale with it, and lengths keep their
    distribution. Rows near a chunk's end wait for the next chunk so the
    output stays sorted.
    """
    if factor == 1.0:
        yield from chunks
        return
    rng = np.random.default_rng(seed)
    carry: TraceChunk | None = None
    for c in _pieces(chunks, max(1, int(CHUNK_ROWS // math.ceil(factor)))):
        copies = np.floor(factor) + (rng.random(len(c)) < factor - np.floor(factor))
        idx = np.repeat(np.arange(len(c)), copies.astype(np.int64))
        first = np.ones(len(idx), dtype=bool)
        first[1:] = idx[1:] != idx[:-1]
        shift = np.where(first, 0.0, rng.random(len(idx)) * jitter_s)
        arrival = c.arrival[idx] + shift
        hashes = [c.hashes[i] for i in idx] if c.hashes is not None else None
        scaled = TraceChunk(arrival, c.prompt[idx], c.output[idx], hashes)
        if carry is not None:
            scaled = _concat(carry, scaled)
        order = np.argsort(scaled.arrival, kind="stable")
        scaled = _take(scaled, order) if len(order) else scaled
        # Later input can still land before `horizon`: hold those rows back.
        horizon = c.arrival[-1] if len(c) else -math.inf
        ready = scaled.arrival <= horizon
        yield _take(scaled, ready)
        carry = _take(scaled, ~ready)
    if carry is not None and len(carry):
        yield carry


def _pieces(chunks: Iterator[TraceChunk], rows: int) -> Iterator[TraceChunk]:
    """Chunks cut to at most `rows` rows, so a large factor keeps the copies' memory flat."""
    for c in chunks:
        if len(c) <= rows:
            yield c
            continue
        for at in range(0, len(c), rows):
            yield _take(c, np.arange(at, min(at + rows, len(c))))


def _concat(a: TraceChunk, b: TraceChunk) -> TraceChunk:
    hashes = None
    if a.hashes is not None or b.hashes is not None:
        hashes = (a.hashes or [()] * len(a)) + (b.hashes or [()] * len(b))
    return TraceChunk(
        np.concatenate([a.arrival, b.arrival]),
        np.concatenate([a.prompt, b.prompt]),
        np.concatenate([a.output, b.output]),
        hashes,
    )
