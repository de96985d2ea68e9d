"""`qscale simulate`: replay traffic against a simulated vLLM fleet, one row per policy."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from policies.errors import UserError
from qscale.commands.checks import DAY_S, add_columns_argument, distinct, number, output_file, whole
from simulations.traffic.limits import MAX_RATE_SCALE, MAX_SPAN_S

HELP = "replay a trace against a simulated fleet and compare scaling policies"
MAX_REPLICAS = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, help="trace file, or synthetic:NAME?k=v (poisson, mmpp, diurnal, ramp, step)")
    add_columns_argument(parser)
    parser.add_argument("--policy", action="append", required=True, help="policy name (repeat); reference points: bound, oracle, static-best")
    parser.add_argument("--set", action="append", default=[], metavar="POLICY.PARAM=VALUE", help="policy parameter (repeat)")
    parser.add_argument("--rate-scale", type=number(0, MAX_RATE_SCALE, above=True), default=1.0,
                        help="multiply the arrival rate (default 1)")
    parser.add_argument("--start", type=number(0, MAX_SPAN_S), default=0.0, help="start this many seconds into the trace")
    parser.add_argument("--duration", type=number(0, MAX_SPAN_S, above=True), default=None,
                        help="simulate only this many seconds of trace")
    parser.add_argument("--cold-start", type=number(0, DAY_S), default=None,
                        help="fixed replica cold start in seconds (default: node+pull+load model)")
    parser.add_argument("--profile", default="llama3-8b-h100", help="performance profile name or YAML (default llama3-8b-h100)")
    parser.add_argument("--max-replicas", type=whole(1, MAX_REPLICAS), default=100,
                        help="fleet ceiling for every policy (default 100)")
    parser.add_argument("--slo-ttft", type=number(0, DAY_S, above=True), default=None, help="TTFT SLO in seconds (default 2)")
    parser.add_argument("--slo-target", type=number(0, 1, above=True), default=0.99,
                        help="SLO attainment that oracle and static-best must reach (default 0.99)")
    parser.add_argument("--router", choices=["round_robin", "least_outstanding"], default="round_robin")
    parser.add_argument("--scrape-lag", type=number(0, DAY_S), default=0.0, help="seconds the autoscaler's data lags")
    parser.add_argument("--scrape-failure-rate", type=number(0, 1), default=0.0, help="share of failed pod scrapes")
    parser.add_argument("--gpu-hour-price", type=number(0, 1e6), default=None, help="price of one GPU-hour (default 2.5)")
    parser.add_argument("--seed", type=whole(0, 2**63 - 1), default=0)
    parser.add_argument("--json", type=output_file(), default=None, help="write results as JSON here")
    parser.add_argument("--plot", type=output_file(".png"), default=None, help="write a PNG figure here")
    parser.add_argument("--requests-out", type=output_file(), default=None,
                        help="write one CSV row per request (TTFT, ITL, e2e, queue time, outcome)")
    parser.add_argument("--config", dest="settings_file", default=None, help="settings YAML")


def _check(args: argparse.Namespace) -> None:
    """What one flag alone cannot tell (each flag is checked as it is parsed)."""
    def path(value: str | None) -> Path | None:
        return Path(value) if value and not value.startswith("synthetic:") else None

    distinct({"--json": args.json, "--plot": args.plot, "--requests-out": args.requests_out},
             {"--trace": path(args.trace), "--profile": path(args.profile), "--config": path(args.settings_file)})
    if args.plot is not None and set(args.policy) <= {"bound"}:
        raise UserError("--plot: nothing to draw (bound is not a simulated run)")


def run(args: argparse.Namespace, settings) -> int:
    from qscale.progress import ProgressBar
    from simulations.compare import compare
    from simulations.traffic import load_traffic

    _check(args)
    names, sets = _policies(args)
    cfg = _sim_config(args, settings.simulation)

    def traffic():
        return load_traffic(args.trace, args.rate_scale, args.start, args.duration, seed=args.seed,
                            columns=args.columns)

    traffic()  # the source, its first rows, a slice past its end: checked before any run

    def progress(label: str, total: float):
        return ProgressBar(label, total, unit="sim s")

    comparison = compare(traffic, names, cfg, sets, args.max_replicas, args.slo_target, progress,
                         requests_out=args.requests_out, warn=lambda line: print(line, file=sys.stderr))
    _print_table(comparison, cfg.slo_ttft_s)
    if args.json is not None:
        _write_json(args, comparison, cfg)
    if args.plot is not None:
        from simulations.plot import plot_comparison

        plot_comparison(comparison.results, args.plot, cfg.slo_ttft_s)
    return 0


def _policies(args: argparse.Namespace) -> tuple[list[str], dict]:
    """The policy names (each known) and their `--set` parameters."""
    from policies import registry
    from simulations.compare import NAMES, parse_sets

    names = list(dict.fromkeys(args.policy))
    for name in names:
        if name not in NAMES:
            registry.get(name)
    return names, parse_sets(args.set, names)


def _sim_config(args: argparse.Namespace, sim):
    from policies import ScaleLimits
    from simulations.coldstart import ColdStartModel
    from simulations.profile import load_profile
    from simulations.runner import SimConfig

    return _config(SimConfig,
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


def _write_json(args: argparse.Namespace, comparison, cfg) -> None:
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
