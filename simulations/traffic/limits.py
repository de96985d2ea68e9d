"""Bounds every traffic source is held to: beyond them a number is a typo, not a workload."""

from __future__ import annotations

MAX_TOKENS = 10_000_000  # one request's prompt or output (int32-safe; the longest contexts are ~10M)
MAX_SPAN_S = 1e8  # a trace's span, a synthetic duration, a slice start (about 3 years)
MAX_RATE = 10_000.0  # requests per second of a synthetic process
MAX_RATE_SCALE = 10_000.0  # a trace's rate multiplier
