"""Traffic: recorded trace loaders, synthetic processes and stream transforms."""

from __future__ import annotations

from collections.abc import Iterator

from policies.errors import UserError
from simulations.traffic.loaders import TraceChunk, detect_format, open_trace
from simulations.traffic.synthetic import generate
from simulations.traffic.transforms import scale_rate, time_slice


def load_traffic(
    source: str,
    rate_scale: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    seed: int = 0,
) -> Iterator[TraceChunk]:
    """A trace path or `synthetic:NAME?...`, sliced and rate-scaled, as a chunk stream."""
    if rate_scale <= 0 or rate_scale != rate_scale:
        raise UserError(f"rate scale must be positive, got {rate_scale}")
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise UserError("slice start must be >= 0 and duration > 0")
    chunks = generate(source) if source.startswith("synthetic:") else open_trace(source)
    if start_s or duration_s is not None:
        chunks = time_slice(chunks, start_s, duration_s)
    if rate_scale != 1.0:
        chunks = scale_rate(chunks, rate_scale, seed=seed)
    return chunks


__all__ = ["TraceChunk", "detect_format", "load_traffic", "open_trace"]
