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

Each key has a range (`COMMON` and `PROCESSES`: rates up to 10000/s, token figures up to 10M,
durations up to 1e8 s); an unknown or repeated key, or a value out of range, is a one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

import numpy as np

from policies.errors import UserError
from simulations.traffic.limits import MAX_RATE, MAX_SPAN_S, MAX_TOKENS
from simulations.traffic.loaders import TraceChunk

CHUNK_S = 600.0

RateFn = Callable[[np.ndarray], np.ndarray]
Params = dict[str, float]


@dataclass(frozen=True)
class Param:
    """One spec key: its default (a number, or a function of the other parameters) and range."""

    default: float | Callable[[Params], float]
    low: float = 0.0
    high: float = MAX_RATE
    above_low: bool = False  # the low end itself is excluded
    whole: bool = False

    def check(self, name: str, key: str, value: float) -> None:
        if not math.isfinite(value):
            raise UserError(f"synthetic:{name}: {key} must be a finite number, got {value}")
        if self.whole and value != int(value):
            raise UserError(f"synthetic:{name}: {key} must be a whole number, got {value:g}")
        if value < self.low or (self.above_low and value == self.low) or value > self.high:
            raise UserError(f"synthetic:{name}: {key} must be in {'(' if self.above_low else '['}"
                            f"{self.low:g}, {self.high:g}], got {value:g}")


RATE = Param(10.0)
DWELL_S = Param(60.0, low=1.0, high=MAX_SPAN_S)  # below the 1-s rate grid a state is invisible
COMMON: dict[str, Param] = {
    "duration": Param(3600.0, high=MAX_SPAN_S, above_low=True),
    "seed": Param(0.0, high=2.0**53, whole=True),
    "prompt_mean": Param(1155.0, low=1.0, high=MAX_TOKENS),
    "output_mean": Param(211.0, low=1.0, high=MAX_TOKENS),
    "prompt_sigma": Param(0.8, high=5.0),
    "output_sigma": Param(0.9, high=5.0),
    "prompt_max": Param(7900.0, low=1.0, high=MAX_TOKENS),
    "output_max": Param(2000.0, low=1.0, high=MAX_TOKENS),
}


def _poisson(p: Params, rng: np.random.Generator) -> RateFn:
    rate = p["rate"]
    return lambda t: np.full_like(t, rate)


def _diurnal(p: Params, rng: np.random.Generator) -> RateFn:
    rate, amp, period, phase = p["rate"], p["amplitude"], p["period_s"], p["phase_s"]
    return lambda t: rate * (1 + amp * np.sin(2 * math.pi * (t + phase) / period))


def _ramp(p: Params, rng: np.random.Generator) -> RateFn:
    a, b, d = p["start_rate"], p["end_rate"], p["duration"]
    return lambda t: a + (b - a) * np.clip(t / d, 0, 1)


def _step(p: Params, rng: np.random.Generator) -> RateFn:
    low, high, at, until = p["low"], p["high"], p["at"], p["until"]
    return lambda t: np.where((t >= at) & (t < until), high, low)


def _mmpp(p: Params, rng: np.random.Generator) -> RateFn:
    low, high = p["low"], p["high"]
    mean_low, mean_high = p["mean_low_s"], p["mean_high_s"]
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


@dataclass(frozen=True)
class Process:
    rate: Callable[[Params, np.random.Generator], RateFn]
    params: dict[str, Param]


PROCESSES: dict[str, Process] = {
    "poisson": Process(_poisson, {"rate": RATE}),
    "mmpp": Process(_mmpp, {"low": Param(5.0), "high": Param(40.0), "mean_low_s": Param(300.0, 1.0, MAX_SPAN_S),
                            "mean_high_s": DWELL_S}),
    "diurnal": Process(_diurnal, {"rate": RATE, "amplitude": Param(0.6, high=1.0),
                                  "period_s": Param(86400.0, low=1.0, high=MAX_SPAN_S),
                                  "phase_s": Param(0.0, low=-MAX_SPAN_S, high=MAX_SPAN_S)}),
    "ramp": Process(_ramp, {"start_rate": Param(2.0), "end_rate": Param(40.0)}),
    "step": Process(_step, {"low": Param(5.0), "high": Param(30.0),
                            "at": Param(lambda p: p["duration"] / 3, high=MAX_SPAN_S),
                            "until": Param(lambda p: 2 * p["duration"] / 3, high=MAX_SPAN_S)}),
}


def parse_spec(spec: str) -> tuple[str, Params]:
    """`synthetic:NAME?k=v&...` -> (NAME, every parameter with its default filled in), or a
    one-line error naming the bad key: unknown, repeated, not a number or out of range."""
    body = spec.removeprefix("synthetic:")
    name, _, query = body.partition("?")
    if name not in PROCESSES:
        raise UserError(f"unknown synthetic trace {name!r} (known: {', '.join(sorted(PROCESSES))})")
    known = {**COMMON, **PROCESSES[name].params}
    given = _given(name, query, known)
    params: Params = {}
    for key, param in known.items():  # duration first: later defaults read it
        params[key] = given[key] if key in given else _default(param, params)
    for key, value in params.items():
        known[key].check(name, key, value)
    _check_together(name, params)
    return name, params


def _given(name: str, query: str, known: dict[str, Param]) -> Params:
    given: Params = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in known:
            raise UserError(f"synthetic:{name}: unknown parameter {key!r} (known: {', '.join(sorted(known))})")
        if key in given:
            raise UserError(f"synthetic:{name}: {key} given twice")
        try:
            given[key] = float(value)
        except ValueError:
            raise UserError(f"synthetic:{name}: {key} must be a number, got {value!r}") from None
    return given


def _default(param: Param, params: Params) -> float:
    return param.default(params) if callable(param.default) else param.default


def _check_together(name: str, p: Params) -> None:
    for kind in ("prompt", "output"):
        if p[f"{kind}_mean"] > p[f"{kind}_max"]:
            raise UserError(f"synthetic:{name}: {kind}_mean {p[f'{kind}_mean']:g} is above "
                            f"{kind}_max {p[f'{kind}_max']:g}")
    if name == "step" and not p["at"] < min(p["until"], p["duration"]):
        raise UserError(f"synthetic:step: the step must start (at {p['at']:g}) before it ends "
                        f"(until {p['until']:g}) and before the trace does (duration {p['duration']:g})")


def generate(spec: str) -> Iterator[TraceChunk]:
    """Validate the spec now (errors surface at once), then stream chunks lazily."""
    name, params = parse_spec(spec)
    return _chunks(name, params)


def _chunks(name: str, params: dict[str, float]) -> Iterator[TraceChunk]:
    rng = np.random.default_rng(int(params["seed"]))
    rate_fn = PROCESSES[name].rate(params, rng)
    duration = params["duration"]
    prompt_mean, output_mean = params["prompt_mean"], params["output_mean"]
    sigma_p, sigma_o = params["prompt_sigma"], params["output_sigma"]
    prompt_max, output_max = params["prompt_max"], params["output_max"]
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
