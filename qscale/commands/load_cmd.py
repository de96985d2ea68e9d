"""`qscale load`: replay a trace open-loop against an OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

from policies.errors import UserError
from qscale.commands.checks import check_http_url, output_file

HELP = "replay a trace open-loop against an OpenAI-compatible server, one CSV row per request"
MAX_SECONDS = 1e8  # a span, start or timeout beyond this (about 3 years) is a typo
MAX_RATE_SCALE = 10_000.0
MAX_TOKENS = 10_000_000  # one request's prompt or output
MAX_COUNT = 10**9  # --max-requests, --max-in-flight


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
    parser.add_argument("--no-stream", action="store_true", help="ask for whole responses instead of SSE streams")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", choices=["tokens", "text"], default="tokens",
                        help="tokens (default): token ids, shared only where the trace's hash blocks say; "
                             "text: the word 'hello' repeated (every prompt shares one prefix)")


def _check_number(flag: str, value: float, low: float, high: float, low_inclusive: bool) -> None:
    above_low = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and above_low and value <= high):
        bracket = "[" if low_inclusive else "("
        raise UserError(f"{flag} must be in {bracket}{low:g}, {high:g}], got {value}")


def _check_out(out: Path) -> None:
    """The one output-file check the other commands use: tried for writing now, not after the run."""
    try:
        output_file()(str(out))
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"--out: {exc}") from None


def validate(args: argparse.Namespace) -> None:
    """Every flag, before anything is read or sent: a one-line UserError (exit 2) otherwise."""
    for u in args.url:
        check_http_url(u)
    _check_number("--duration", args.duration, 0, MAX_SECONDS, low_inclusive=False)
    _check_number("--start", args.start, 0, MAX_SECONDS, low_inclusive=True)
    _check_number("--rate-scale", args.rate_scale, 0, MAX_RATE_SCALE, low_inclusive=False)
    _check_number("--timeout", args.timeout, 0, MAX_SECONDS, low_inclusive=False)
    for flag, value, high in (("--max-requests", args.max_requests, MAX_COUNT),
                              ("--max-in-flight", args.max_in_flight, MAX_COUNT),
                              ("--max-prompt-tokens", args.max_prompt_tokens, MAX_TOKENS),
                              ("--max-output-tokens", args.max_output_tokens, MAX_TOKENS)):
        if value is not None and not 1 <= value <= high:
            raise UserError(f"{flag} must be 1..{high}, got {value}")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be 0..2**63-1, got {args.seed}")
    _check_out(args.out)


def run(args: argparse.Namespace, settings) -> int:
    from server.loadgen import replay
    from server.prompts import prompt_builder
    from simulations.traffic import load_traffic

    validate(args)
    chunks = load_traffic(args.trace, args.rate_scale, args.start, args.duration, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    url = [u.rstrip("/") + "/v1/completions" for u in args.url]
    summary = asyncio.run(replay(
        chunks, url, args.out, model=args.model, duration_s=args.duration, max_requests=args.max_requests,
        max_in_flight=args.max_in_flight, timeout_s=args.timeout, max_prompt_tokens=args.max_prompt_tokens,
        max_output_tokens=args.max_output_tokens, stream=not args.no_stream,
        prompts=prompt_builder(args.prompt, args.seed),
    ))
    fmt = lambda v: f"{v:.3f}s" if v is not None else "-"  # noqa: E731
    print(f"sent {summary.sent}  ok {summary.ok}  cut {summary.cut}  timeout {summary.timeouts}  "
          f"refused {summary.refused}  429 {summary.status_429}  503 {summary.status_503}  "
          f"errors {summary.errors}  skipped {summary.skipped}  TTFT p50 {fmt(summary.ttft_p50_s)}  "
          f"p99 {fmt(summary.ttft_p99_s)}  e2e p50 {fmt(summary.e2e_p50_s)}  wall {summary.wall_s:.1f}s")
    print(f"wrote {args.out}")
    return 0 if summary.sent else 1
