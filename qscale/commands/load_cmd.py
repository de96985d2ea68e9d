"""`qscale load`: replay a trace open-loop against an OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from urllib.parse import urlparse

from policies.errors import UserError

HELP = "replay a trace open-loop against an OpenAI-compatible server, one CSV row per request"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, help="trace file or synthetic:NAME?k=v")
    parser.add_argument("--url", required=True, action="append",
                        help="base URL, e.g. http://127.0.0.1:8000 (repeat: round robin)")
    parser.add_argument("--out", required=True, type=Path, help="CSV to write")
    parser.add_argument("--rate-scale", type=float, default=1.0)
    parser.add_argument("--start", type=float, default=0.0, help="start this many seconds into the trace")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of trace to replay (default 60)")
    parser.add_argument("--max-requests", type=int, default=10_000)
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    parser.add_argument("--model", default=None, help="model name to send (default: the server's first)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None)
    parser.add_argument("--max-output-tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, settings) -> int:
    from server.loadgen import replay
    from simulations.traffic import load_traffic

    for u in args.url:
        parsed = urlparse(u)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"--url must be http(s)://host:port, got {u!r}")
    if args.duration <= 0 or args.max_requests < 1 or args.max_in_flight < 1 or args.timeout <= 0:
        raise UserError("--duration, --max-requests, --max-in-flight and --timeout must be positive")
    if not args.out.parent.exists():
        args.out.parent.mkdir(parents=True, exist_ok=True)
    chunks = load_traffic(args.trace, args.rate_scale, args.start, args.duration, seed=args.seed)
    url = [u.rstrip("/") + "/v1/completions" for u in args.url]
    summary = asyncio.run(replay(
        chunks, url, args.out, model=args.model, duration_s=args.duration, max_requests=args.max_requests,
        max_in_flight=args.max_in_flight, timeout_s=args.timeout, max_prompt_tokens=args.max_prompt_tokens,
        max_output_tokens=args.max_output_tokens,
    ))
    fmt = lambda v: f"{v:.3f}s" if v is not None else "-"  # noqa: E731
    print(f"sent {summary.sent}  ok {summary.ok}  429 {summary.status_429}  503 {summary.status_503}  "
          f"errors {summary.errors}  skipped {summary.skipped}  TTFT p50 {fmt(summary.ttft_p50_s)}  "
          f"p99 {fmt(summary.ttft_p99_s)}  e2e p50 {fmt(summary.e2e_p50_s)}  wall {summary.wall_s:.1f}s")
    print(f"wrote {args.out}")
    return 0 if summary.sent else 1
