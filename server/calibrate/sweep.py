"""Bounded experiments against a live vLLM server, each turned into fit observations.

* `probe_max_num_seqs`: many short requests at once; how many get a first token before the
  first of them finishes is the server's `max_num_seqs`.
* `probe_batched_tokens`: one longest prompt alone; vLLM's `vllm:iteration_tokens_total`
  histogram counts the steps it took, so its chunk size (`max_num_batched_tokens`) follows.
* `prefill_point`: one prompt of P tokens alone, one output token: TTFT is the frontend's
  time plus ceil(P / budget) prefill steps.
* `decode_point`: c requests with P-token prompts at once; while all c are decoding (after
  the last first token, before the first last token) every step gives each one token, so
  the tokens one stream received in that window are the steps, and the window is their time.

Every prompt is distinct token ids (`server/prompts.py`), so the prefix cache never helps.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import dataclass
from itertools import count

import aiohttp

from server.calibrate.facts import ServerFacts, scrape
from server.calibrate.streams import StreamTrace, stream_completion
from server.prompts import TokenPrompts
from simulations.fit import Observation
from simulations.profile import prefill_attention

REQUEST_TIMEOUT_S = 120.0
QUEUED_BUCKET_S = 0.3  # vLLM's lowest request-latency bucket bound


class Sweep:
    """The experiments, with fresh prompts for each request."""

    def __init__(self, session: aiohttp.ClientSession, facts: ServerFacts, seed: int | None = None) -> None:
        self.session = session
        self.facts = facts
        # A fresh seed each run: a prompt the server saw in an earlier run would be a prefix-cache hit.
        self._prompts = TokenPrompts(seed=secrets.randbits(48) if seed is None else seed)
        self._ids = count(1_000_000)

    def _prompt(self, tokens: int) -> list[int]:
        return self._prompts.build(next(self._ids), tokens)

    async def _send(self, prompt_tokens: int, output_tokens: int) -> StreamTrace:
        prompt = self._prompt(prompt_tokens)
        trace = await stream_completion(self.session, self.facts.url, self.facts.model, prompt, output_tokens,
                                        REQUEST_TIMEOUT_S)
        if not trace.chunks and "ServerDisconnected" in trace.error:
            # A kept-alive connection the server had just closed: once more, on a new one.
            trace = await stream_completion(self.session, self.facts.url, self.facts.model, prompt, output_tokens,
                                            REQUEST_TIMEOUT_S)
        if trace.error or not trace.complete:
            raise RuntimeError(f"a calibration request failed: {trace.error or 'stream ended early'}")
        return trace

    # --- what the server does not publish ---------------------------------------------

    async def one_step_s(self) -> float:
        """One request's mean time between tokens: roughly one decode step."""
        trace = await self._send(8, 33)
        assert trace.first is not None and trace.last is not None
        return (trace.last - trace.first) / 32

    async def probe_max_num_seqs(self, concurrency: int, output_tokens: int) -> tuple[int, bool]:
        """(requests that never waited, whether any waited) for `concurrency` requests at once.

        The first wave (at most `max_num_seqs`) is scheduled at once; the rest wait in the
        engine's queue until a whole wave of `output_tokens` steps is done. vLLM's own
        `vllm:request_queue_time_seconds` (time in WAITING, measured in the engine, so the
        api server's own backlog does not count) tells them apart: its lowest bucket
        (QUEUED_BUCKET_S) holds the first wave, provided one wave lasts longer than that."""
        before = await scrape(self.session, self.facts.url)
        await asyncio.gather(*(self._send(8, output_tokens) for _ in range(concurrency)))
        after = await scrape(self.session, self.facts.url)
        key = f"vllm:request_queue_time_seconds_bucket:{QUEUED_BUCKET_S}"
        if key not in after:
            raise RuntimeError("vllm:request_queue_time_seconds has no 0.3 s bucket: cannot probe max_num_seqs "
                               "(pass --max-num-seqs)")
        first_wave = int(round(after[key] - before.get(key, 0.0)))
        return first_wave, first_wave < concurrency

    async def probe_batched_tokens(self) -> tuple[int, int]:
        """(prompt tokens sent, engine steps its prefill took) for one longest prompt alone."""
        prompt = self.facts.max_model_len - 2
        before = await scrape(self.session, self.facts.url)
        await self._send(prompt, 1)
        after = await scrape(self.session, self.facts.url)
        steps = after.get("vllm:iteration_tokens_total_count", 0) - before.get("vllm:iteration_tokens_total_count", 0)
        return prompt, max(1, int(round(steps)))

    # --- the points the fit uses ------------------------------------------------------

    async def prefill_point(self, prompt_tokens: int, budget: int) -> Observation:
        trace = await self._send(prompt_tokens, 1)
        chunks, done, attention = 0, 0, 0.0
        while done < prompt_tokens:
            t = min(budget, prompt_tokens - done)
            attention += prefill_attention(done, t)
            done += t
            chunks += 1
        return Observation(f"prefill P={prompt_tokens}", trace.ttft or 0.0, steps=chunks,
                           prefill_tokens=prompt_tokens, prefill_attention=attention, requests=1)

    async def decode_point(self, concurrency: int, prompt_tokens: int, output_tokens: int) -> Observation | None:
        traces = await asyncio.gather(*(self._send(prompt_tokens, output_tokens) for _ in range(concurrency)))
        start = max(t.first for t in traces)  # type: ignore[type-var]
        end = min(t.last for t in traces)  # type: ignore[type-var]
        steps = min(t.tokens_between(start, end) for t in traces)
        if steps < 4 or end <= start:
            return None  # too little overlap to time decode steps
        # Context each step attends over, averaged over the window: prompt, plus what each stream
        # had generated when the window opened, plus half the window's own tokens.
        generated_at_start = sum(t.tokens_between(0.0, start) for t in traces) / len(traces)
        mean_context = prompt_tokens + generated_at_start + steps / 2
        return Observation(f"decode c={concurrency} P={prompt_tokens}", end - start, steps=steps,
                           decode_seq_steps=concurrency * steps,
                           context_steps=concurrency * steps * mean_context)


@dataclass(frozen=True)
class Plan:
    """The grid of points: prompt lengths alone, and concurrency x prompt length together."""

    prefill_lengths: list[int]
    decode_points: list[tuple[int, int]]  # (concurrency, prompt tokens)
    output_tokens: int
    repeats: int

    @property
    def size(self) -> int:
        return (len(self.prefill_lengths) + len(self.decode_points)) * self.repeats


def geometric(low: int, high: int, n: int) -> list[int]:
    if high <= low:
        return [low]
    return sorted({int(round(low * (high / low) ** (i / (n - 1)))) for i in range(n)})


def make_plan(facts: ServerFacts, max_num_seqs: int, output_tokens: int = 48, repeats: int = 3) -> Plan:
    longest = facts.max_model_len - 2
    prefill = geometric(16, longest, 8)
    decode: list[tuple[int, int]] = []
    for c in geometric(1, max_num_seqs, min(6, max(2, int(math.log2(max_num_seqs)) + 1))):
        for prompt in (16, max(32, min(facts.max_model_len // 2, facts.max_model_len - output_tokens - 2))):
            if c * (prompt + output_tokens) <= facts.kv_tokens:
                decode.append((c, prompt))
    return Plan(prefill, decode, output_tokens, repeats)
