"""Open-loop trace replay against any OpenAI-compatible endpoint.

Each request is sent at its trace arrival time (to one URL, or round robin over several) (scaled), whatever happened to earlier
ones (open loop: a slow server does not slow the arrivals down). Responses are streamed
to measure time to first token and inter-token latency; 429 and 503 are counted, not
retried. Bounded in count (`max_requests`), time (`duration_s`) and concurrency
(`max_in_flight`: arrivals beyond it are recorded as `skipped`).
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import aiohttp
import numpy as np

from simulations.traffic import TraceChunk


@dataclass
class RequestRecord:
    rid: int
    scheduled_s: float
    sent_s: float
    status: int
    ttft_s: float | None
    e2e_s: float | None
    itl_mean_s: float | None
    prompt_tokens: int
    output_tokens: int
    tokens_received: int
    error: str = ""


@dataclass
class LoadSummary:
    sent: int
    ok: int
    status_429: int
    status_503: int
    errors: int
    skipped: int
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None
    wall_s: float


async def _one(session: aiohttp.ClientSession, url: str, model: str | None, rid: int, scheduled: float,
               start: float, prompt: int, output: int, timeout_s: float) -> RequestRecord:
    body = {"prompt": " ".join(["hello"] * max(1, prompt)), "max_tokens": max(1, output), "stream": True,
            "ignore_eos": True, "temperature": 0}
    if model:
        body["model"] = model
    sent = time.perf_counter()
    rec = RequestRecord(rid, scheduled, sent - start, 0, None, None, None, prompt, output, 0)
    token_times: list[float] = []
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = (await resp.text())[:200].replace("\n", " ")
                return rec
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                choices = chunk.get("choices") or []
                text = choices[0].get("text") or (choices[0].get("delta") or {}).get("content") if choices else None
                if text:
                    token_times.append(time.perf_counter())
            done = time.perf_counter()
    except TimeoutError:
        rec.error = "timeout"
        return rec
    except aiohttp.ClientError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:200]
        return rec
    rec.tokens_received = len(token_times)
    if token_times:
        rec.ttft_s = token_times[0] - sent
        if len(token_times) > 1:
            rec.itl_mean_s = (token_times[-1] - token_times[0]) / (len(token_times) - 1)
    rec.e2e_s = done - sent
    return rec


async def replay(
    chunks: list[TraceChunk] | object,
    url: str | list[str],
    out: Path,
    model: str | None = None,
    duration_s: float | None = None,
    max_requests: int = 100_000,
    max_in_flight: int = 1000,
    timeout_s: float = 120.0,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
) -> LoadSummary:
    urls = [url] if isinstance(url, str) else list(url)
    records: list[RequestRecord] = []
    skipped = 0
    in_flight: set[asyncio.Task] = set()
    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        rid = 0
        for chunk in chunks:  # type: ignore[union-attr]
            arrival = chunk.arrival
            prompt = chunk.prompt if max_prompt_tokens is None else np.minimum(chunk.prompt, max_prompt_tokens)
            output = chunk.output if max_output_tokens is None else np.minimum(chunk.output, max_output_tokens)
            for i in range(len(arrival)):
                t = float(arrival[i])
                if rid >= max_requests or (duration_s is not None and t >= duration_s):
                    break
                delay = start + t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(in_flight) >= max_in_flight:
                    skipped += 1
                    rid += 1
                    continue
                # Several URLs: round robin, like a Service over the replicas.
                task = asyncio.create_task(_one(session, urls[rid % len(urls)], model, rid, t, start, int(prompt[i]),
                                                int(output[i]), timeout_s))
                in_flight.add(task)
                task.add_done_callback(lambda tk: (in_flight.discard(tk), records.append(tk.result())))
                rid += 1
            else:
                continue
            break
        if in_flight:
            await asyncio.wait(set(in_flight))
    wall = time.perf_counter() - start
    records.sort(key=lambda r: r.rid)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([fl.name for fl in fields(RequestRecord)])
        for r in records:
            writer.writerow(list(asdict(r).values()))
    codes = Counter(r.status for r in records)
    ttfts = np.array([r.ttft_s for r in records if r.ttft_s is not None])
    e2es = np.array([r.e2e_s for r in records if r.e2e_s is not None])

    def q(a: np.ndarray, p: float) -> float | None:
        return float(np.quantile(a, p)) if len(a) else None

    return LoadSummary(
        sent=len(records), ok=codes.get(200, 0), status_429=codes.get(429, 0), status_503=codes.get(503, 0),
        errors=sum(1 for r in records if r.status != 200 and r.status not in (429, 503)),
        skipped=skipped, ttft_p50_s=q(ttfts, 0.5), ttft_p99_s=q(ttfts, 0.99), e2e_p50_s=q(e2es, 0.5), wall_s=wall,
    )
