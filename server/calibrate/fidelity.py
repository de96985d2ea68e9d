"""Fidelity: the same trace slice measured on a live server and simulated with its profile.

`measured` reads `qscale load`'s per-request CSV (complete answers only); `simulated` runs
the simulator's one-replica fleet (the replica model, static policy) on the same capped
slice and collects each request's TTFT and end-to-end latency; `ratios` divides one by
the other (simulated / measured: above 1 means the model is slower than the server).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from policies import ScaleLimits, registry
from simulations.profile import PerformanceProfile
from simulations.request import Request
from simulations.runner import SimConfig, simulate
from simulations.traffic import TraceChunk

FIGURES = ("ttft_p50_s", "ttft_p90_s", "e2e_p50_s", "e2e_p90_s")


@dataclass(frozen=True)
class Latencies:
    ttft_p50_s: float
    ttft_p90_s: float
    e2e_p50_s: float
    e2e_p90_s: float
    complete: int
    requests: int

    @classmethod
    def of(cls, ttfts: list[float], e2es: list[float], requests: int) -> Latencies:
        if not ttfts or not e2es:
            raise ValueError("no complete request to measure")
        t, e = np.asarray(ttfts), np.asarray(e2es)
        return cls(float(np.quantile(t, 0.5)), float(np.quantile(t, 0.9)), float(np.quantile(e, 0.5)),
                   float(np.quantile(e, 0.9)), len(e2es), requests)

    def as_dict(self) -> dict:
        return asdict(self)


def measured(load_csv: Path) -> Latencies:
    """Latencies of the complete answers in a `qscale load` CSV."""
    ttfts, e2es, total = [], [], 0
    with load_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["outcome"] == "skipped":
                continue
            total += 1
            if row["outcome"] == "ok":
                ttfts.append(float(row["ttft_s"]))
                e2es.append(float(row["e2e_s"]))
    return Latencies.of(ttfts, e2es, total)


def capped(chunks: Iterable[TraceChunk], max_prompt: int, max_output: int) -> Iterator[TraceChunk]:
    """The slice as `qscale load --max-prompt-tokens/--max-output-tokens` sends it."""
    for c in chunks:
        yield TraceChunk(c.arrival, np.minimum(c.prompt, max_prompt), np.minimum(c.output, max_output), c.hashes)


def simulated(chunks: Iterable[TraceChunk], profile: PerformanceProfile, replicas: int = 1,
              prefix_caching: bool = True) -> Latencies:
    """The slice on a fixed fleet of `replicas` warm replicas of `profile`."""
    ttfts: list[float] = []
    e2es: list[float] = []
    count = [0]

    def collect(req: Request) -> None:
        count[0] += 1
        if req.finished is not None and req.ttft_s is not None and req.e2e_s is not None:
            ttfts.append(req.ttft_s)
            e2es.append(req.e2e_s)

    cfg = SimConfig(profile=profile, limits=ScaleLimits(min_replicas=replicas, max_replicas=replicas),
                    initial_replicas=replicas, warmup_s=0.0, client_timeout_s=600.0, prefix_caching=prefix_caching)
    simulate(iter(chunks), registry.create("static", replicas=replicas), cfg, on_request=collect)
    return Latencies.of(ttfts, e2es, count[0])


def ratios(live: Latencies, model: Latencies) -> dict[str, float]:
    """simulated / measured per figure."""
    return {k: getattr(model, k) / getattr(live, k) for k in FIGURES}


def table(rows: dict[str, tuple[Latencies, Latencies]]) -> str:
    """One line per comparison: measured, simulated and their ratio for each figure."""
    head = f"{'comparison':<28}" + "".join(f"{k:>24}" for k in FIGURES)
    lines = [head, f"{'':<28}" + "".join(f"{'meas / sim = ratio':>24}" for _ in FIGURES)]
    for name, (live, model) in rows.items():
        r = ratios(live, model)
        cells = "".join(f"{getattr(live, k):>9.3f} /{getattr(model, k):>7.3f} ={r[k]:>5.2f}" for k in FIGURES)
        lines.append(f"{name:<28}{cells}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Slice:
    """The trace slice replayed and simulated (calibration never sees it: its prompts are its own)."""

    trace: str
    start_s: float
    duration_s: float
    rate_scale: float = 1.0
    max_prompt: int = 1024
    max_output: int = 256
    seed: int = 11

    def chunks(self) -> list[TraceChunk]:
        from simulations.traffic import load_traffic

        return list(capped(load_traffic(self.trace, self.rate_scale, self.start_s, self.duration_s, seed=self.seed),
                           self.max_prompt, self.max_output))


def as_sent(load_csv: Path, sent_from: list[TraceChunk] | None = None) -> list[TraceChunk]:
    """The requests a `qscale load` CSV sent, at the times it sent them (the server's arrivals).

    An open-loop client on a busy host sends late (its own event loop is busy reading
    streams); the model is judged on the arrivals the server saw, not the ones the trace
    asked for. `sent_from`: the chunks that were replayed, for their prefix hash blocks."""
    hashes = [h for c in sent_from or [] for h in (c.hashes or [None] * len(c))]
    rows = []
    with load_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["outcome"] != "skipped":
                rid = int(row["rid"])
                rows.append((float(row["sent_s"]), int(row["prompt_tokens"]), int(row["output_tokens"]),
                             hashes[rid] if rid < len(hashes) else None))
    rows.sort(key=lambda r: r[0])
    arrival = np.array([r[0] for r in rows], dtype=float)
    prompt = np.array([r[1] for r in rows], dtype=np.int64)
    output = np.array([r[2] for r in rows], dtype=np.int64)
    kept = [r[3] for r in rows]
    return [TraceChunk(arrival, prompt, output, kept if any(h is not None for h in kept) else None)]


def replay_slice(base_url: str, piece: Slice, out_csv: Path, model: str | None = None) -> Latencies:
    """Replay `piece` open loop against `base_url` (token-id prompts) and measure it."""
    import asyncio

    from server.loadgen import replay
    from server.prompts import TokenPrompts

    asyncio.run(replay(piece.chunks(), f"{base_url}/v1/completions", out_csv, model=model,
                       duration_s=piece.duration_s, timeout_s=300.0, prompts=TokenPrompts(seed=piece.seed)))
    return measured(out_csv)
