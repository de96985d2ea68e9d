"""`qscale scoreboard`: every policy, at blog defaults and at its best, on a panel of traffic shapes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from policies.errors import UserError
from qscale.commands.checks import distinct, folder, output_file, whole

HELP = "run the policy scoreboard: hybrid and every baseline on a panel of traffic shapes"
# The shared traces beside the checkout (../shared/traces from the repository root).
DEFAULT_TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
MAX_WORKERS = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--traces", type=folder("traces folder"), default=DEFAULT_TRACES,
                        help=f"folder with the public traces (default {DEFAULT_TRACES})")
    parser.add_argument("--quick", action="store_true", help="small loads, one cold start, 10-minute slices")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only cells whose name contains TEXT (repeat)")
    parser.add_argument("--workers", type=whole(1, MAX_WORKERS), default=None,
                        help="processes (default: one per core; never more than the cells)")
    parser.add_argument("--json", type=output_file(), default=None, help="write every figure as JSON here")
    parser.add_argument("--plot", type=output_file(".png"), default=None,
                        help="write SLO vs GPU-hours per cell (PNG)")
    parser.add_argument("--cells", action="store_true", help="also print every cell's rows")
    parser.add_argument("--tune-trials", type=whole(1, 10_000), default=None,
                        help="trials of each baseline's best-configuration search (default 24; --quick 10)")


def _check(args: argparse.Namespace) -> None:
    if not args.traces.is_dir():  # the default (a given --traces is checked as it is parsed)
        raise UserError(f"traces folder not found: {args.traces} (give --traces, e.g. ../shared/traces)")
    distinct({"--json": args.json, "--plot": args.plot}, {})


def _check_traces(cells: list) -> None:
    """Every trace file the chosen cells replay is there and readable as a trace."""
    from simulations.traffic import detect_format

    for trace in dict.fromkeys(c.trace for c in cells):
        if not trace.startswith("synthetic:"):
            detect_format(Path(trace))


def run(args: argparse.Namespace, settings) -> int:
    from simulations.scoreboard import default_panel, run_panel
    from simulations.scoreboard.report import (
        plot,
        write_cells,
        write_json,
        write_shortfalls,
        write_summary,
    )

    _check(args)
    cells = default_panel(args.traces, quick=args.quick)
    if args.only:
        cells = [c for c in cells if any(text in c.name for text in args.only)]
        if not cells:
            raise UserError(f"no panel cell matches {args.only}")
    _check_traces(cells)
    start = time.monotonic()

    def done(result, n: int, total: int) -> None:
        print(f"[{n:>2}/{total}] {result.cell.name:<28} {result.runs:>3} runs {result.wall_s:6.1f}s "
              f"({time.monotonic() - start:5.0f}s elapsed)", file=sys.stderr, flush=True)

    workers = min(args.workers or os.cpu_count() or 1, len(cells))
    trials = args.tune_trials or (10 if args.quick else 24)
    results = run_panel(cells, workers, on_done=done, tune_trials=trials)
    write_summary(results, sys.stdout)
    if args.cells:
        write_cells(results, sys.stdout)
    write_shortfalls(results, sys.stdout)
    if args.json is not None:
        write_json(results, args.json)
    if args.plot is not None:
        plot(results, args.plot)
    print(f"({len(cells)} cells in {time.monotonic() - start:.0f}s)", file=sys.stderr)
    return 0
