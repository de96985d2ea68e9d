"""One streamed completion, timed chunk by chunk with the tokens each chunk carried."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class StreamTrace:
    sent: float  # perf_counter when the request went out
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival, tokens in the chunk)
    complete: bool = False
    error: str = ""

    @property
    def first(self) -> float | None:
        return self.chunks[0][0] if self.chunks else None

    @property
    def last(self) -> float | None:
        return self.chunks[-1][0] if self.chunks else None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    def tokens_between(self, start: float, end: float) -> int:
        """Tokens that arrived after `start` and at or before `end`."""
        return sum(n for t, n in self.chunks if start < t <= end)


def _tokens_in(payload: dict) -> int:
    # vLLM's `return_token_ids` names each chunk's tokens; a server that ignores it sends one per chunk.
    choices = payload.get("choices") or [{}]
    ids = choices[0].get("token_ids")
    return len(ids) if isinstance(ids, list) else 1


async def stream_completion(session: aiohttp.ClientSession, base: str, model: str, prompt: list[int],
                            max_tokens: int, timeout_s: float) -> StreamTrace:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": True, "return_token_ids": True}
    trace = StreamTrace(time.perf_counter())
    try:
        async with session.post(f"{base}/v1/completions", json=body,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                trace.error = f"HTTP {resp.status}: {(await resp.read())[:160].decode(errors='replace')}"
                return trace
            async for line in resp.content:
                now = time.perf_counter()
                if line.startswith(b"data: [DONE]"):
                    trace.complete = True
                elif line.startswith(b"data: {"):
                    payload = json.loads(line[6:])
                    if "error" in payload:
                        trace.error = str(payload["error"])[:160]
                        return trace
                    trace.chunks.append((now, _tokens_in(payload)))
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        trace.error = f"{type(exc).__name__}: {exc}"[:160]
    return trace
