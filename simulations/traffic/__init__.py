"""Traffic: recorded trace loaders, synthetic processes and stream transforms."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from policies.errors import UserError
from simulations.traffic.columns import ColumnMap
from simulations.traffic.limits import MAX_RATE_SCALE, MAX_SPAN_S
from simulations.traffic.loaders import TraceChunk, detect_format, open_trace
from simulations.traffic.synthetic import generate
from simulations.traffic.transforms import scale_rate, time_slice


def load_traffic(
    source: str,
    rate_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    seed: int = 0,
    columns: ColumnMap | None = None,
) -> Iterator[TraceChunk]:
    """A trace path or `synthetic:NAME?...`, sliced and rate-scaled, as a chunk stream;
    `columns`: read the trace as a request log with these columns (`ColumnMap.parse`).

    Checked now, before any consumer starts: the parameters, the source, and that the
    stream holds at least one request (reading the trace up to its first one in the slice).
    """
    _check_slice(rate_scale, start_s, duration_s)
    if source.startswith("synthetic:"):
        if columns is not None:
            raise UserError(f"a column mapping applies to a trace file, not to {source}")
        chunks = generate(source)
    else:
        chunks = open_trace(source, columns)
    if start_s or duration_s is not None:
        chunks = time_slice(chunks, start_s, duration_s)
    if rate_scale != 1.0:
        chunks = scale_rate(chunks, rate_scale, seed=seed)
    return _not_empty(chunks, _no_requests(source, rate_scale, start_s, duration_s))


def _check_slice(rate_scale: float, start_s: float, duration_s: float | None) -> None:
    if not (math.isfinite(rate_scale) and 0 < rate_scale <= MAX_RATE_SCALE):
        raise UserError(f"rate scale must be in (0, {MAX_RATE_SCALE:g}], got {rate_scale}")
    if not (math.isfinite(start_s) and 0 <= start_s <= MAX_SPAN_S):
        raise UserError(f"slice start must be in [0, {MAX_SPAN_S:g}] s, got {start_s}")
    if duration_s is not None and not (math.isfinite(duration_s) and 0 < duration_s <= MAX_SPAN_S):
        raise UserError(f"slice duration must be in (0, {MAX_SPAN_S:g}] s, got {duration_s}")


def _no_requests(source: str, rate_scale: float, start_s: float, duration_s: float | None) -> str:
    what = f"{source}: no requests"
    if start_s or duration_s is not None:
        end = math.inf if duration_s is None else start_s + duration_s
        what += f" in the slice [{start_s:g}, {end:g}) s"
    if rate_scale != 1.0:
        what += f" at rate scale {rate_scale:g}"
    return what


def _not_empty(chunks: Iterator[TraceChunk], error: str) -> Iterator[TraceChunk]:
    """The stream from its first non-empty chunk on; `error` if it has none."""
    for c in chunks:
        if len(c):
            return itertools.chain([c], chunks)
    raise UserError(error)


__all__ = ["ColumnMap", "TraceChunk", "detect_format", "load_traffic", "open_trace"]
