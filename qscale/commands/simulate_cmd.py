"""`qscale simulate`: replay traffic against a simulated vLLM fleet, one row per policy."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from policies.errors import UserError

HELP = "replay a trace against a simulated fleet and compare scaling policies"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, help="trace file, or synthetic:NAME?k=v (poisson, mmpp, diurnal, ramp, step)")
    parser.add_argument("--policy", action="append", required=True, help="policy name (repeat); reference points: bound, oracle, static-best")
    parser.add_argument("--set", action="append", default=[], metavar="POLICY.PARAM=VALUE", help="policy parameter (repeat)")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiply the arrival rate (default 1)")
    parser.add_argument("--start", type=float, default=0.0, help="start this many seconds into the trace")
    parser.add_argument("--duration", type=float, default=None, help="simulate only this many seconds of trace")
    parser.add_argument("--cold-start", type=float, default=None, help="fixed replica cold start in seconds (default: node+pull+load model)")
    parser.add_argument("--profile", default="llama3-8b-h100", help="performance profile name or YAML (default llama3-8b-h100)")
    parser.add_argument("--max-replicas", type=int, default=100, help="fleet ceiling for every policy (default 100)")
    parser.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in seconds (default 2)")
    parser.add_argument("--slo-target", type=float, default=0.99, help="SLO attainment that oracle and static-best must reach (default 0.99)")
    parser.add_argument("--router", choices=["round_robin", "least_outstanding"], default="round_robin")
    parser.add_argument("--scrape-lag", type=float, default=0.0, help="seconds the autoscaler's data lags")
    parser.add_argument("--scrape-failure-rate", type=float, default=0.0, help="share of failed pod scrapes")
    parser.add_argument("--gpu-hour-price", type=float, default=None, help="price of one GPU-hour (default 2.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG figure here")
    parser.add_argument("--requests-out", type=Path, default=None,
                        help="write one CSV row per request (TTFT, ITL, e2e, queue time, outcome)")
    parser.add_argument("--config", dest="settings_file", default=None, help="settings YAML")


FINITE = ("rate_scale", "start", "duration", "cold_start", "slo_ttft", "slo_target", "scrape_lag",
          "scrape_failure_rate", "gpu_hour_price")


def _check(args: argparse.Namespace) -> None:
    for name in FINITE:
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.rate_scale > 10_000:
        raise UserError(f"--rate-scale {args.rate_scale:g} is absurd (at most 10000)")
    if not 0 < args.slo_target <= 1:
        raise UserError(f"--slo-target must be in (0, 1], got {args.slo_target}")
    if args.gpu_hour_price is not None and args.gpu_hour_price < 0:
        raise UserError("--gpu-hour-price must not be negative")
    if args.seed < 0:
        raise UserError("--seed must not be negative")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG: give a .png path, got {args.plot}")
    if args.rate_scale <= 0:
        raise UserError(f"--rate-scale must be positive, got {args.rate_scale}")
    if args.cold_start is not None and args.cold_start < 0:
        raise UserError("--cold-start must not be negative")
    if args.max_replicas < 1:
        raise UserError("--max-replicas must be at least 1")
    if not 0 <= args.scrape_failure_rate <= 1:
        raise UserError("--scrape-failure-rate must be between 0 and 1")
    if args.scrape_lag < 0:
        raise UserError("--scrape-lag must not be negative")
    if args.slo_ttft is not None and args.slo_ttft <= 0:
        raise UserError("--slo-ttft must be positive")
    for out in (args.json, args.plot, args.requests_out):
        if out is not None:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot create output folder {out.parent}: {exc.strerror}") from None
    if not args.trace.startswith("synthetic:") and not Path(args.trace).is_file():
        raise UserError(f"trace file not found: {args.trace}")


def run(args: argparse.Namespace, settings) -> int:
    from policies import ScaleLimits, registry
    from qscale.progress import ProgressBar
    from simulations.coldstart import ColdStartModel
    from simulations.compare import NAMES, compare, parse_sets
    from simulations.profile import load_profile
    from simulations.runner import SimConfig
    from simulations.traffic import detect_format, load_traffic

    _check(args)
    if not args.trace.startswith("synthetic:"):
        detect_format(Path(args.trace))
    names = list(dict.fromkeys(args.policy))
    for name in names:
        if name not in NAMES:
            registry.get(name)
    sets = parse_sets(args.set, names)
    sim = settings.simulation
    cfg = _config(SimConfig,
        profile=load_profile(args.profile),
        cold_start=ColdStartModel.fixed_total(args.cold_start) if args.cold_start is not None else ColdStartModel(),
        limits=ScaleLimits(min_replicas=0, max_replicas=args.max_replicas),
        tick_s=sim.tick_s,
        slo_ttft_s=args.slo_ttft or sim.slo_ttft_s,
        gpu_hour_price=args.gpu_hour_price if args.gpu_hour_price is not None else sim.gpu_hour_price,
        router=args.router,
        scrape_lag_s=args.scrape_lag,
        scrape_failure_rate=args.scrape_failure_rate,
        seed=args.seed,
    )

    def traffic():
        return load_traffic(args.trace, args.rate_scale, args.start, args.duration, seed=args.seed)

    def progress(label: str, total: float):
        return ProgressBar(label, total, unit="sim s")

    comparison = compare(traffic, names, cfg, sets, args.max_replicas, args.slo_target, progress,
                         requests_out=args.requests_out, warn=lambda line: print(line, file=sys.stderr))
    _print_table(comparison, cfg.slo_ttft_s)
    if args.json is not None:
        payload = {
            "trace": args.trace,
            "rate_scale": args.rate_scale,
            "profile": cfg.profile.name,
            "slo_ttft_s": cfg.slo_ttft_s,
            "initial_replicas": comparison.initial_replicas,
            "oracle_utilization": comparison.oracle_utilization,
            "static_best_replicas": comparison.references.static_best_replicas,
            "rejected_share": comparison.rejected_share,
            "policies": {
                name: {**r.summary(), "timeline": [asdict(row) for row in r.timeline]}
                for name, r in comparison.results.items()
            },
        }
        args.json.write_text(json.dumps(payload, indent=1))
    if args.plot is not None:
        from simulations.plot import plot_comparison

        plot_comparison(comparison.results, args.plot, cfg.slo_ttft_s)
    return 0


def _config(cls, **kw):
    """Settings that got past the flags but not the model (e.g. a bad settings file): one line."""
    from pydantic import ValidationError

    try:
        return cls(**kw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _print_table(c, slo: float) -> None:
    out = sys.stdout
    out.write(
        f"{'policy':<12} {'SLO<' + format(slo, 'g') + 's':>8} {'rejected':>8} {'TTFT p99':>9} {'GPU-h':>8} "
        f"{'x oracle':>8} {'x static':>8} {'x bound':>8} {'scale ev':>8} {'flaps':>6} {'dropped':>8}\n"
    )
    for name, r in c.results.items():
        p99 = f"{r.ttft_p99_s:.2f}s" if r.ttft_p99_s is not None else "-"
        out.write(
            f"{name:<12} {r.slo_attainment:>8.2%} {r.rejected:>8} {p99:>9} {r.gpu_hours:>8.2f} "
            f"{_ratio(r.ratio(r.oracle_gpu_hours)):>8} {_ratio(r.ratio(r.static_best_gpu_hours)):>8} "
            f"{_ratio(r.ratio(r.bound_gpu_hours)):>8} {r.scale_events:>8} {r.flaps:>6} {r.dropped:>8}\n"
        )
    refs = c.references
    how = (f"schedule at {refs.oracle_utilization:.0%} of the work estimate" if refs.oracle_utilization
           else "a constant fleet was the cheapest schedule found")
    out.write(
        f"(oracle: {refs.oracle.gpu_hours:.2f} GPU-h, {how}; static-best: {refs.static_best_replicas} replicas; "
        f"bound: {refs.bound.gpu_hours:.2f} GPU-h; every policy started with {c.initial_replicas} warm replicas)\n"
    )
