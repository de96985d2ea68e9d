"""Open-loop trace replay against any OpenAI-compatible endpoint.

Each request is sent at its trace arrival time (to one URL, or round robin over several) (scaled), whatever happened to earlier
ones (open loop: a slow server does not slow the arrivals down). Responses are streamed
to measure time to first token and inter-token latency (or, with `stream=False`, read whole);
429 and 503 are counted, not retried. Bounded in count (`max_requests`), time (`duration_s`)
and concurrency (`max_in_flight`: arrivals beyond it are recorded as `skipped`).

A request counts as ok only when the user got a complete answer: a stream whose `data: [DONE]`
came after a `finish_reason`, or a whole JSON body with choices. Every request gets one
`outcome` (a CSV column, and a count in the summary):

* `ok`: complete.
* `cut`: HTTP 200, but the stream or body ended early (or was not valid JSON).
* `timeout`: no complete answer within `timeout_s` (connecting included).
* `refused`: the connection was refused.
* `error:<status>`: an HTTP error status (the summary also counts 429 and 503 apart).
* `error:stream`: the server sent an error event inside a 200 stream.
* `error:<exception>`: any other failure (e.g. the server closed before answering).
* `skipped`: not sent (`max_in_flight` reached); in the CSV, not in `sent`.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import aiohttp
import numpy as np

from server.prompts import TextPrompts, TokenPrompts
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
    outcome: str = ""


@dataclass
class LoadSummary:
    sent: int
    ok: int  # complete answers only (see the module docstring)
    status_429: int
    status_503: int
    errors: int  # every other failure: HTTP errors, error events, other exceptions
    skipped: int
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None  # over ok requests
    wall_s: float
    cut: int = 0
    timeouts: int = 0
    refused: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # every outcome, counted


@dataclass
class _Reading:
    """What came back: token arrival times, whether it was complete, an error message."""
    token_times: list[float] = field(default_factory=list)
    complete: bool = False
    error: str = ""
    tokens: int | None = None  # the server's own count (non-streamed usage)


async def _read_stream(resp: aiohttp.ClientResponse, out: _Reading) -> None:
    """Fill `out` as events arrive (a cut stream keeps what it delivered)."""
    finished = False
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            out.complete = finished and not out.error
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            out.error = "cut: an SSE event that is not JSON"
            break
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            err = chunk["error"]
            out.error = "stream: " + str(err.get("message", err) if isinstance(err, dict) else err)[:180]
            continue
        choice = (chunk.get("choices") or [{}])[0]
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        if (text or (isinstance(text, str) and not choice.get("finish_reason"))
                or (choice.get("delta") or {}).get("content")):
            # A completion chunk carries a token even when its text is empty (a byte-level
            # token that ends inside a character), except an empty closing chunk that only
            # gives the finish reason; a chat chunk counts once it has content.
            out.token_times.append(time.perf_counter())
        finished = finished or bool(choice.get("finish_reason"))


async def _read_whole(resp: aiohttp.ClientResponse, out: _Reading) -> None:
    try:
        body = json.loads(await resp.read())
    except ValueError:
        out.error = "cut: the body is not complete JSON"
        return
    choices = body.get("choices") if isinstance(body, dict) else None
    out.complete = isinstance(choices, list) and bool(choices)
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        out.tokens = usage["completion_tokens"]
    if not out.complete:
        out.error = "cut: no choices in the body"


def _outcome(reading: _Reading) -> str:
    if reading.error.startswith("stream:"):
        return "error:stream"
    return "ok" if reading.complete else "cut"


def _failure(exc: BaseException, status: int) -> tuple[str, str]:
    """(outcome, error text) for an exception while sending or reading."""
    text = f"{type(exc).__name__}: {exc}"[:200]
    if isinstance(exc, TimeoutError):
        return "timeout", "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError):
        return "refused", text
    if status == 200:  # the answer had begun: it was cut
        return "cut", text
    return f"error:{type(exc).__name__}", text


def _fill_timings(rec: RequestRecord, reading: _Reading, sent: float, done: float) -> None:
    rec.tokens_received = reading.tokens if reading.tokens is not None else len(reading.token_times)
    times = reading.token_times
    if times:
        rec.ttft_s = times[0] - sent
        if len(times) > 1:
            rec.itl_mean_s = (times[-1] - times[0]) / (len(times) - 1)
    if rec.outcome == "ok":
        rec.e2e_s = done - sent


async def _one(session: aiohttp.ClientSession, url: str, model: str | None, rid: int, scheduled: float,
               start: float, prompt: int, output: int, timeout_s: float, stream: bool = True,
               body_prompt: str | list[int] | None = None) -> RequestRecord:
    body = {"prompt": body_prompt if body_prompt is not None else " ".join(["hello"] * max(1, prompt)),
            "max_tokens": max(1, output), "stream": stream, "ignore_eos": True, "temperature": 0}
    if model:
        body["model"] = model
    sent = time.perf_counter()
    rec = RequestRecord(rid, scheduled, sent - start, 0, None, None, None, prompt, output, 0)
    reading = _Reading()
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = (await resp.read())[:200].decode(errors="replace").replace("\n", " ")
                rec.outcome = f"error:{resp.status}"
                return rec
            await (_read_stream(resp, reading) if stream else _read_whole(resp, reading))
        rec.outcome, rec.error = _outcome(reading), reading.error
    except Exception as exc:  # timeouts, refusals, cuts, anything else: each has its outcome
        rec.outcome, rec.error = _failure(exc, rec.status)
    _fill_timings(rec, reading, sent, time.perf_counter())
    return rec


async def replay(
    chunks: Iterable[TraceChunk],
    url: str | list[str],
    out: Path,
    model: str | None = None,
    duration_s: float | None = None,
    max_requests: int = 100_000,
    max_in_flight: int = 1000,
    timeout_s: float = 120.0,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    stream: bool = True,
    prompts: TokenPrompts | TextPrompts | None = None,
) -> LoadSummary:
    """Replay `chunks` open loop; write one CSV row per request to `out`; summarize.

    `prompts` builds each request's prompt (default: token ids, no accidental shared prefix;
    see server/prompts.py)."""
    urls = [url] if isinstance(url, str) else list(url)
    prompts = prompts or TokenPrompts()
    records: list[RequestRecord] = []
    skipped: list[RequestRecord] = []
    in_flight: set[asyncio.Task] = set()
    start = time.perf_counter()

    def done(task: asyncio.Task) -> None:
        in_flight.discard(task)
        records.append(task.result())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_in_flight)) as session:
        for rid, t, prompt, output, hashes in _arrivals(chunks, duration_s, max_requests, max_prompt_tokens,
                                                        max_output_tokens):
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                skipped.append(RequestRecord(rid, t, time.perf_counter() - start, 0, None, None, None, prompt,
                                             output, 0, "max_in_flight reached", "skipped"))
                continue
            # Several URLs: round robin, like a Service over the replicas.
            task = asyncio.create_task(_one(session, urls[rid % len(urls)], model, rid, t, start, prompt, output,
                                            timeout_s, stream, prompts.build(rid, prompt, hashes)))
            in_flight.add(task)
            task.add_done_callback(done)
        if in_flight:
            await asyncio.wait(set(in_flight))
    wall = time.perf_counter() - start
    _write_csv(out, records + skipped)
    return _summarize(records, len(skipped), wall)


def _arrivals(chunks: Iterable[TraceChunk], duration_s: float | None, max_requests: int, max_prompt: int | None,
              max_output: int | None) -> Iterator[tuple[int, float, int, int, tuple[int, ...] | None]]:
    """(rid, arrival, prompt tokens, output tokens, prefix hash blocks) for each request to send, in order."""
    rid = 0
    for chunk in chunks:
        prompt = chunk.prompt if max_prompt is None else np.minimum(chunk.prompt, max_prompt)
        output = chunk.output if max_output is None else np.minimum(chunk.output, max_output)
        for i in range(len(chunk.arrival)):
            t = float(chunk.arrival[i])
            if rid >= max_requests or (duration_s is not None and t >= duration_s):
                return
            yield rid, t, int(prompt[i]), int(output[i]), chunk.hashes[i] if chunk.hashes is not None else None
            rid += 1


def _write_csv(out: Path, records: list[RequestRecord]) -> None:
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([fl.name for fl in fields(RequestRecord)])
        for r in sorted(records, key=lambda r: r.rid):
            writer.writerow(list(asdict(r).values()))


def _summarize(records: list[RequestRecord], skipped: int, wall: float) -> LoadSummary:
    outcomes = Counter(r.outcome for r in records)
    codes = Counter(r.status for r in records if r.outcome.startswith("error:"))
    ttfts = np.array([r.ttft_s for r in records if r.ttft_s is not None])
    e2es = np.array([r.e2e_s for r in records if r.e2e_s is not None])

    def q(a: np.ndarray, p: float) -> float | None:
        return float(np.quantile(a, p)) if len(a) else None

    ok, cut, timeouts, refused = (outcomes.get(k, 0) for k in ("ok", "cut", "timeout", "refused"))
    s429, s503 = codes.get(429, 0), codes.get(503, 0)
    return LoadSummary(
        sent=len(records), ok=ok, status_429=s429, status_503=s503,
        errors=len(records) - ok - cut - timeouts - refused - s429 - s503, skipped=skipped,
        ttft_p50_s=q(ttfts, 0.5), ttft_p99_s=q(ttfts, 0.99), e2e_p50_s=q(e2es, 0.5), wall_s=wall,
        cut=cut, timeouts=timeouts, refused=refused, outcomes=dict(sorted(outcomes.items())),
    )
