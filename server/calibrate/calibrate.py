"""Calibrate: read the server's facts, probe what it does not publish, sweep, fit, write a profile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from server.calibrate.facts import ServerFacts, read_facts
from server.calibrate.sweep import Plan, Sweep, make_plan
from simulations.fit import Fit, Observation, fit_step_model
from simulations.profile import Calibration, PerformanceProfile

# max_num_seqs probes: requests at once; the second only when the first never queued. 160 is
# more than a CPU server's default (128) allows. Each probe's outputs last WAVE_S of decode
# steps, so the first wave is still running when the api server has handed over the rest.
PROBES = (16, 160)
WAVE_S = 1.0


@dataclass
class Limits:
    max_num_seqs: int
    max_num_batched_tokens: int
    notes: list[str]


@dataclass
class CalibrationResult:
    facts: ServerFacts
    limits: Limits
    observations: list[Observation]
    fit: Fit
    profile: PerformanceProfile
    duration_s: float


async def _limits(sweep: Sweep, facts: ServerFacts, max_num_seqs: int | None, budget: int | None) -> Limits:
    notes: list[str] = []
    if max_num_seqs is None:
        step_s = await sweep.one_step_s()
        output = max(32, min(facts.max_model_len - 16, int(WAVE_S / max(step_s, 1e-5))))
        for concurrency in PROBES:
            seen, waited = await sweep.probe_max_num_seqs(concurrency, output)
            if waited:
                break
        max_num_seqs = max(1, seen)
        notes.append(f"max_num_seqs {seen}: of {concurrency} requests sent at once, the ones that never queued"
                     if waited else
                     f"max_num_seqs at least {seen}: {concurrency} requests never queued (pass --max-num-seqs)")
    if budget is None:
        prompt, steps = await sweep.probe_batched_tokens()
        budget = -(-prompt // steps)
        if steps == 1:
            budget = max(budget, facts.max_model_len)
            notes.append(f"max_num_batched_tokens at least {prompt}: a {prompt}-token prompt took one step "
                         f"(pass --max-num-batched-tokens)")
        else:
            notes.append(f"max_num_batched_tokens ~{budget}: a {prompt}-token prompt took {steps} steps")
    return Limits(max_num_seqs, budget, notes)


async def _measure(sweep: Sweep, plan: Plan, budget: int, deadline: float,
                   progress: Callable[[float], None]) -> list[Observation]:
    obs: list[Observation] = []
    done = 0
    for _ in range(plan.repeats):
        for prompt in plan.prefill_lengths:
            if time.monotonic() > deadline:
                return obs
            obs.append(await sweep.prefill_point(prompt, budget))
            done += 1
            progress(done)
        for concurrency, prompt in plan.decode_points:
            if time.monotonic() > deadline:
                return obs
            point = await sweep.decode_point(concurrency, prompt, plan.output_tokens)
            if point is not None:
                obs.append(point)
            done += 1
            progress(done)
    return obs


def _profile(name: str, facts: ServerFacts, limits: Limits, fit: Fit, obs: list[Observation],
             duration_s: float) -> PerformanceProfile:
    terms = fit.terms
    notes = list(limits.notes)
    if fit.outliers:
        notes.append(f"{len(fit.outliers)} of {len(obs)} points left out as disturbed: "
                     + ", ".join(o.label for o in fit.outliers))
    record = Calibration(
        url=facts.url, server=facts.version, measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        points=len(obs), duration_s=round(duration_s, 1), residual_median=round(fit.quantile(0.5), 4),
        residual_p90=round(fit.quantile(0.9), 4), residual_max=round(fit.worst(), 4), terms_dropped=fit.dropped,
        notes=notes)
    return PerformanceProfile(
        name=name, model=facts.model, gpu="", base_s=max(terms["base_s"], 1e-6),
        prefill_token_s=terms["prefill_token_s"], prefill_attention_s=terms["prefill_attention_s"],
        decode_seq_s=terms["decode_seq_s"], context_token_s=terms["context_token_s"], frontend_s=terms["frontend_s"],
        block_size=facts.block_size, num_gpu_blocks=facts.num_gpu_blocks, max_num_seqs=limits.max_num_seqs,
        max_num_batched_tokens=limits.max_num_batched_tokens, max_model_len=facts.max_model_len, calibration=record)


async def calibrate(url: str, name: str, model: str | None = None, budget_s: float = 180.0,
                    max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                    repeats: int = 5, on_plan: Callable[[Plan], Callable[[float], None]] | None = None,
                    ) -> CalibrationResult:
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        facts = await read_facts(session, url.rstrip("/"), model)
        sweep = Sweep(session, facts)
        limits = await _limits(sweep, facts, max_num_seqs, max_num_batched_tokens)
        plan = make_plan(facts, limits.max_num_seqs, output_tokens=96, repeats=repeats)
        progress = on_plan(plan) if on_plan else (lambda _done: None)
        obs = await _measure(sweep, plan, limits.max_num_batched_tokens, started + budget_s, progress)
    fit = fit_step_model(obs)
    duration = time.monotonic() - started
    return CalibrationResult(facts, limits, obs, fit, _profile(name, facts, limits, fit, obs, duration), duration)


def run_calibration(url: str, name: str, **kwargs) -> CalibrationResult:
    return asyncio.run(calibrate(url, name, **kwargs))
