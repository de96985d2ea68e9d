"""`qscale tune`: the cheapest parameters of a policy that meet the SLO on your traffic.

    qscale tune --trace day1.csv --trace day2.csv --policy hybrid --out tuned.yaml

Tunes on the first part of each trace, reports on the held-out last part against the
policy's defaults, static-best and oracle, and writes a config `qscale run` accepts plus a
Pareto plot. `--storage`/`--study` put the search in a database that `qscale tune --worker`
processes on other machines join.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from policies.errors import UserError
from qscale.commands.checks import DAY_S, add_columns_argument, distinct, number, output_file, whole
from simulations.traffic.limits import MAX_RATE_SCALE, MAX_SPAN_S

HELP = "search a policy's parameters for your traffic (constrained: fewest GPU-hours meeting the SLO)"
INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", action="append", default=[], help="trace file or synthetic:NAME?k=v (repeat: tuned on all)")
    parser.add_argument("--policy", default=None, help="policy to tune (its Params declare the search space)")
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                        help="hold a parameter at this value (repeat); POLICY.PARAM=VALUE also accepted")
    parser.add_argument("--out", type=output_file((".yaml", ".yml")), default=None,
                        help="write the chosen config here (a qscale run config)")
    parser.add_argument("--plot", type=output_file(".png"), default=None,
                        help="Pareto plot (default: beside --out, .pareto.png)")
    parser.add_argument("--trials", type=whole(1, 100_000), default=50, help="trials in the study, all workers together (default 50)")
    parser.add_argument("--timeout", type=number(0, 7 * DAY_S, above=True), default=None,
                        help="stop starting trials after this many seconds")
    parser.add_argument("--holdout", type=number(0, 0.9), default=0.3,
                        help="share of each trace's time held out for the report (default 0.3; 0: none)")
    parser.add_argument("--slo-ttft", type=number(0, DAY_S, above=True), default=None, help="TTFT SLO in seconds (default 2)")
    parser.add_argument("--slo-target", type=number(0, 1, above=True), default=0.99,
                        help="SLO attainment the chosen parameters must reach on every trace (default 0.99)")
    parser.add_argument("--profile", default="llama3-8b-h100", help="performance profile name or YAML")
    parser.add_argument("--cold-start", type=number(0, DAY_S), default=None, help="fixed replica cold start in seconds")
    parser.add_argument("--rate-scale", type=number(0, MAX_RATE_SCALE, above=True), default=1.0,
                        help="multiply every trace's arrival rate")
    parser.add_argument("--start", type=number(0, MAX_SPAN_S), default=0.0, help="start this many seconds into each trace")
    parser.add_argument("--duration", type=number(0, MAX_SPAN_S, above=True), default=None,
                        help="use this many seconds of each trace (before the held-out split)")
    parser.add_argument("--max-replicas", type=whole(1, 10_000), default=100, help="fleet ceiling (default 100)")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL: sqlite:///FILE (default: beside --out, .study.db) or "
                             "postgresql://USER:PASS@HOST/DB to share the study between machines")
    parser.add_argument("--study", default=None, help="study name (default POLICY-TRACE)")
    parser.add_argument("--worker", action="store_true",
                        help="join the study in --storage/--study and run trials; the setup comes from the study")
    parser.add_argument("--wait", type=number(0, DAY_S), default=60.0,
                        help="--worker: wait this long for the study to appear (default 60 s)")
    parser.add_argument("--seed", type=whole(0, 2**63 - 1), default=0)
    add_columns_argument(parser)
    parser.add_argument("--config", dest="settings_file", default=None, help="settings YAML")


def run(args: argparse.Namespace, settings) -> int:
    if args.worker:
        return _worker(args)
    from simulations.tuning import session

    setup = _setup(args, settings.simulation)
    _check_outputs(args)
    plot = args.plot or args.out.with_suffix(".pareto.png")
    storage = args.storage or f"sqlite:///{args.out.with_suffix('.study.db')}"
    name = args.study or default_study_name(setup)
    return session.tune(setup, storage, name, args.out, plot, args.timeout, _say)


def default_study_name(setup) -> str:
    """POLICY-TRACE-HASH: the hash of the setup, so rerunning with other options starts a new
    study in the same file instead of being refused."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(setup.model_dump(mode="json", exclude={"trials"}), sort_keys=True).encode())
    return f"{setup.policy}-{setup.traces[0].label}-{digest.hexdigest()[:8]}"


# Flags that shape the search: a worker takes them from the study, so giving one is a mistake.
SETUP_FLAGS = {"--trace": "trace", "--policy": "policy", "--out": "out", "--plot": "plot", "--set": "set",
               "--columns": "columns"}
SETUP_DEFAULTS = {"--trials": ("trials", 50), "--holdout": ("holdout", 0.3), "--slo-ttft": ("slo_ttft", None),
                  "--slo-target": ("slo_target", 0.99), "--profile": ("profile", "llama3-8b-h100"),
                  "--cold-start": ("cold_start", None), "--rate-scale": ("rate_scale", 1.0),
                  "--start": ("start", 0.0), "--duration": ("duration", None),
                  "--max-replicas": ("max_replicas", 100), "--seed": ("seed", 0)}


def _worker(args: argparse.Namespace) -> int:
    from simulations.tuning import session

    if args.storage is None or args.study is None:
        raise UserError("--worker needs --storage and --study (the study to join)")
    ignored = [flag for flag, attr in SETUP_FLAGS.items() if getattr(args, attr)]
    ignored += [flag for flag, (attr, default) in SETUP_DEFAULTS.items() if getattr(args, attr) != default]
    if ignored:
        raise UserError(f"--worker takes its setup from the study: drop {', '.join(ignored)}")
    worker = f"{socket.gethostname()}-{os.getpid()}"
    return session.work(args.storage, args.study, worker, args.timeout, args.wait, _say)


def _setup(args: argparse.Namespace, sim):
    from simulations.compare import parse_sets
    from simulations.tuning.parts import TraceSpec
    from simulations.tuning.setup import StudySetup

    if not args.trace:
        raise UserError("--trace is required (repeat it to tune on several traces)")
    if args.policy is None:
        raise UserError("--policy is required")
    if args.out is None:
        raise UserError("--out is required (the config file to write)")
    _known_policy(args.policy)
    sets = [s if "." in s.split("=", 1)[0] else f"{args.policy}.{s}" for s in args.set]
    fixed = parse_sets(sets, [args.policy])[args.policy]
    from policies import registry

    registry.params(args.policy, **fixed)  # a bad --set fails now, naming the field
    columns = _columns_text(args)
    traces = tuple(TraceSpec(source=t, rate_scale=args.rate_scale, start_s=args.start, duration_s=args.duration,
                             columns=columns) for t in dict.fromkeys(args.trace))
    for spec in traces:
        spec.traffic()  # the source and its slice checked before any run
    return StudySetup(policy=args.policy, fixed=fixed, traces=traces, holdout=args.holdout,
                      slo_target=args.slo_target, slo_ttft_s=args.slo_ttft or sim.slo_ttft_s,
                      profile=args.profile, cold_start_s=args.cold_start, max_replicas=args.max_replicas,
                      tick_s=sim.tick_s, gpu_hour_price=sim.gpu_hour_price, trials=args.trials, seed=args.seed)


def _columns_text(args: argparse.Namespace) -> str | None:
    """The `--columns` mapping back as text (stored in the study for its workers)."""
    cm = args.columns
    if cm is None:
        return None
    time = f"{cm.time}:{cm.time_unit}" if cm.time and cm.time_unit else cm.time
    items = [f"{role}={name}" for role, name in (("time", time), ("prompt", cm.prompt), ("output", cm.output)) if name]
    return ",".join(items) or None


def _known_policy(name: str) -> None:
    from policies import registry
    from simulations.references import NAMES

    if name in NAMES:
        raise UserError(f"{name} is a reference point, not a policy: nothing to tune")
    registry.get(name)


def _check_outputs(args: argparse.Namespace) -> None:
    def path(value: str | None) -> Path | None:
        return Path(value) if value and not value.startswith("synthetic:") else None

    distinct({"--out": args.out, "--plot": args.plot},
             {f"--trace {t}": path(t) for t in args.trace} | {"--profile": path(args.profile)})


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
