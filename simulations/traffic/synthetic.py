"""Synthetic arrival processes, generated in chunks (flat memory, seeded).

Spec syntax: `synthetic:NAME?key=value&key=value`, e.g.
`synthetic:poisson?rate=20&duration=3600`. Every generator takes `duration`
(s, default 3600) and `seed` (default 0); request lengths are lognormal around
`prompt_mean` (default 1155) and `output_mean` (default 211), the Azure 2023
conversation trace's means, with log-space spreads `prompt_sigma` (0.8) and
`output_sigma` (0.9; 1.5 or more gives heavy-tailed outputs), capped at
`prompt_max` (7900) and `output_max` (2000) tokens.

Processes (rates in requests per second), a registry instead of an if-chain:
* `poisson`: `rate` (10);
* `mmpp`: bursty two-state Markov-modulated Poisson: `low` (5), `high` (40),
  `mean_low_s` (300), `mean_high_s` (60);
* `diurnal`: `rate` (10) x (1 + `amplitude` (0.6) x sin(2 pi (t + `phase_s` (0)) / `period_s` (86400)));
* `ramp`: linear from `start_rate` (2) to `end_rate` (40);
* `step`: `low` (5), jumping to `high` (30) at `at` (duration / 3) until `until` (2 x duration / 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from urllib.parse import parse_qsl

import numpy as np

from policies.errors import UserError
from simulations.traffic.loaders import TraceChunk

CHUNK_S = 600.0

RateFn = Callable[[np.ndarray], np.ndarray]


def _poisson(p: dict[str, float], rng: np.random.Generator) -> RateFn:
    rate = p.get("rate", 10.0)
    return lambda t: np.full_like(t, rate)


def _diurnal(p: dict[str, float], rng: np.random.Generator) -> RateFn:
    rate, amp, period = p.get("rate", 10.0), p.get("amplitude", 0.6), p.get("period_s", 86400.0)
    phase = p.get("phase_s", 0.0)
    return lambda t: rate * (1 + amp * np.sin(2 * math.pi * (t + phase) / period))


def _ramp(p: dict[str, float], rng: np.random.Generator) -> RateFn:
    a, b, d = p.get("start_rate", 2.0), p.get("end_rate", 40.0), p["duration"]
    return lambda t: a + (b - a) * np.clip(t / d, 0, 1)


def _step(p: dict[str, float], rng: np.random.Generator) -> RateFn:
    low, high, d = p.get("low", 5.0), p.get("high", 30.0), p["duration"]
    at, until = p.get("at", d / 3), p.get("until", 2 * d / 3)
    return lambda t: np.where((t >= at) & (t < until), high, low)


def _mmpp(p: dict[str, float], rng: np.random.Generator) -> RateFn:
    low, high = p.get("low", 5.0), p.get("high", 40.0)
    mean_low, mean_high = p.get("mean_low_s", 300.0), p.get("mean_high_s", 60.0)
    # Pre-draw the state switches over the whole duration (a few per hour: tiny).
    switches, t, state = [], 0.0, 0
    while t < p["duration"]:
        t += rng.exponential(mean_high if state else mean_low)
        switches.append(t)
        state ^= 1
    edges = np.array(switches)

    def rate(t: np.ndarray) -> np.ndarray:
        in_high = np.searchsorted(edges, t, side="right") % 2 == 1
        return np.where(in_high, high, low)

    return rate


PROCESSES: dict[str, Callable[[dict[str, float], np.random.Generator], RateFn]] = {
    "poisson": _poisson,
    "mmpp": _mmpp,
    "diurnal": _diurnal,
    "ramp": _ramp,
    "step": _step,
}


def parse_spec(spec: str) -> tuple[str, dict[str, float]]:
    body = spec.removeprefix("synthetic:")
    name, _, query = body.partition("?")
    if name not in PROCESSES:
        raise UserError(f"unknown synthetic trace {name!r} (known: {', '.join(sorted(PROCESSES))})")
    params: dict[str, float] = {"duration": 3600.0, "seed": 0.0}
    for key, value in parse_qsl(query, keep_blank_values=True):
        try:
            params[key] = float(value)
        except ValueError:
            raise UserError(f"synthetic:{name}: {key} must be a number, got {value!r}") from None
    for key, value in params.items():
        if not math.isfinite(value):
            raise UserError(f"synthetic:{name}: {key} must be a finite number, got {value}")
        if value < 0 and key != "phase_s":
            raise UserError(f"synthetic:{name}: {key} must not be negative")
    if params["duration"] <= 0:
        raise UserError(f"synthetic:{name}: duration must be positive")
    return name, params


def generate(spec: str) -> Iterator[TraceChunk]:
    """Validate the spec now (errors surface at once), then stream chunks lazily."""
    name, params = parse_spec(spec)
    return _chunks(name, params)


def _chunks(name: str, params: dict[str, float]) -> Iterator[TraceChunk]:
    rng = np.random.default_rng(int(params["seed"]))
    rate_fn = PROCESSES[name](params, rng)
    duration = params["duration"]
    prompt_mean, output_mean = params.get("prompt_mean", 1155.0), params.get("output_mean", 211.0)
    sigma_p, sigma_o = params.get("prompt_sigma", 0.8), params.get("output_sigma", 0.9)
    prompt_max, output_max = params.get("prompt_max", 7900.0), params.get("output_max", 2000.0)
    start = 0.0
    while start < duration:
        end = min(duration, start + CHUNK_S)
        seconds = np.arange(start, end, 1.0)
        counts = rng.poisson(np.maximum(rate_fn(seconds), 0.0))
        n = int(counts.sum())
        arrival = np.repeat(seconds, counts) + rng.random(n)
        arrival.sort()
        arrival = arrival[arrival < end]
        n = len(arrival)
        prompt = rng.lognormal(math.log(prompt_mean) - sigma_p**2 / 2, sigma_p, n)
        output = rng.lognormal(math.log(output_mean) - sigma_o**2 / 2, sigma_o, n)
        yield TraceChunk(
            arrival,
            np.clip(prompt, 1, max(1.0, prompt_max)).astype(np.int32),
            np.clip(output, 1, max(1.0, output_max)).astype(np.int32),
        )
        start = end
