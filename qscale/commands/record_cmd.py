"""`qscale record`: rebuild a replayable trace from vLLM's metrics in Prometheus.

The reading and the rebuild are in simulations/traffic/history.py and record.py; here are
the flags, the time range and the summary.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from datetime import UTC, datetime

from policies.errors import UserError
from qscale.commands.checks import DAY_S, check_http_url, output_file, whole
from simulations.traffic.limits import MAX_SPAN_S
from simulations.traffic.record import TimeRange, iso_utc

HELP = "rebuild a replayable trace (arrivals, prompt and output lengths) from vLLM's metrics in Prometheus"
UNITS_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
RELATIVE = re.compile(r"^(?:now)?-(\d+(?:\.\d+)?)([smhdw])$")
SELECTOR = re.compile(r"^\{[^\n]*\}$")
TIME_FORMS = "ISO-8601 (2025-05-01T12:00:00Z; no zone: UTC), epoch seconds, 'now' or now-<N><s|m|h|d|w>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--selector", default="",
                        help="label matchers for the vLLM series, e.g. '{job=\"vllm\"}' (default: every series)")
    parser.add_argument("--start", required=True, help=f"range start: {TIME_FORMS}")
    parser.add_argument("--end", default="now", help="range end, same forms (default now)")
    parser.add_argument("--step", type=whole(1, int(DAY_S)), default=60,
                        help="window in whole seconds (default 60; at least two scrape intervals)")
    parser.add_argument("--seed", type=whole(0, 2**63 - 1), default=0, help="seed for arrival times and lengths")
    parser.add_argument("--out", required=True, type=output_file(), help="trace CSV to write (generic format)")


def instant(text: str, flag: str, now: float) -> float:
    """Epoch seconds from `text`: 'now', now-1h (or -1h), epoch seconds, or ISO-8601."""
    text = text.strip()
    if text == "now":
        return now
    if match := RELATIVE.match(text):
        return now - float(match[1]) * UNITS_S[match[2]]
    try:
        value = float(text)
    except ValueError:
        value = _iso_seconds(text, flag)
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{flag} must be a time after 1970, got {text!r}")
    return value


def _iso_seconds(text: str, flag: str) -> float:
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{flag} must be {TIME_FORMS}, got {text!r}") from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def time_range(args: argparse.Namespace, now: float) -> TimeRange:
    """The whole windows from --start (taken to the whole second) to --end, or a one-line error."""
    start, end = math.floor(instant(args.start, "--start", now)), instant(args.end, "--end", now)
    if start > now or end > now + 1:
        flag, text = ("--start", args.start) if start > now else ("--end", args.end)
        raise UserError(f"{flag} {text!r} is in the future")
    if end <= start:
        raise UserError(f"--end ({iso_utc(end)}) must be after --start ({iso_utc(start)})")
    if end - start > MAX_SPAN_S:
        raise UserError(f"the range spans {end - start:.0f} s, more than {MAX_SPAN_S:g} s")
    windows = int((end - start) // args.step)
    if windows == 0:
        raise UserError(f"the range ({end - start:.0f} s) is shorter than one --step ({args.step} s)")
    left_out = end - start - windows * args.step
    if left_out >= 1:
        print(f"qscale: note: the last {left_out:.0f} s (less than one --step) are left out", file=sys.stderr)
    return TimeRange(float(start), args.step, windows)


def run(args: argparse.Namespace, settings) -> int:
    from qscale.progress import ProgressBar
    from simulations.traffic.history import PrometheusHistory
    from simulations.traffic.record import record

    url = check_http_url(args.prometheus, "--prometheus")
    if args.selector and not SELECTOR.match(args.selector):
        raise UserError(f"--selector must be label matchers in braces, e.g. '{{job=\"vllm\"}}', got {args.selector!r}")
    trange = time_range(args, time.time())
    bar = ProgressBar("record", trange.windows, unit="windows")
    try:
        summary = record(PrometheusHistory(url, args.selector, args.step), trange, args.seed, args.out, bar)
    finally:
        bar.close()
    print(summary.line(args.step))
    print(f"wrote {args.out} (timestamp_s: seconds from {iso_utc(trange.start_s)})")
    return 0
