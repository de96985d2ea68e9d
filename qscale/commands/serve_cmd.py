"""`qscale serve`: an emulated vLLM replica (or several), or real vLLM (CPU build or GPU)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from policies.errors import UserError

HELP = "serve an emulated vLLM replica, or launch real vLLM"
MAX_SECONDS = 86_400.0  # one day: longer cold starts, drains or read timeouts are mistakes
MAX_REPLICAS = 1024
MAX_COUNT = 10**9  # --max-num-seqs and friends


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["emulated", "vllm-cpu", "vllm"], default="emulated")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--profile", default="llama3-8b-h100", help="emulated: performance profile name or YAML")
    parser.add_argument("--model-name", default=None, help="served model name")
    parser.add_argument("--cold-start", type=float, default=0.0, help="emulated: seconds before the port opens")
    parser.add_argument("--drain-grace", type=float, default=30.0,
                        help="seconds to finish in-flight work on SIGTERM (vllm: before SIGKILL)")
    parser.add_argument("--read-timeout", type=float, default=30.0,
                        help="emulated: seconds a client has to send a request's headers, and again its body")
    parser.add_argument("--replicas", type=int, default=1, help="emulated: serve N replicas on ports PORT..PORT+N-1")
    parser.add_argument("--legacy-metric-names", action="store_true", help="emulated: pre-0.9 vLLM metric names")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--fault-dir", default=None,
                        help="emulated, fault runs: /metrics shows the fault named in FAULT_DIR/<port> (server/faults.py)")
    parser.add_argument("--tiny", action="store_true", help="vllm-cpu: build and serve a tiny local Llama")
    parser.add_argument("--tiny-size", choices=["small", "medium"], default="small",
                        help="vllm-cpu --tiny: small (2 layers, ~1.5 ms a step) or medium (8 layers, ~7 ms)")
    parser.add_argument("--model", default=None, help="vllm: model path or name to pass through")
    parser.add_argument("--model-dir", default=None, help="vllm-cpu --tiny: where to write the tiny model")
    parser.add_argument("--python", default=None, help="python that has vllm installed (default: this one)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: passed to vLLM unchanged")


def validate(args: argparse.Namespace) -> None:
    """Every flag checked before any work starts: one-line UserError (exit 2) otherwise."""
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    if not 1 <= args.replicas <= MAX_REPLICAS or args.port + args.replicas - 1 > 65535:
        raise UserError(f"--replicas must be 1..{MAX_REPLICAS} and fit in the port range, got {args.replicas}")
    if args.replicas > 1 and args.engine != "emulated":
        raise UserError("--replicas is for --engine emulated; start one vLLM per port")
    for flag, value, low_ok in (("--cold-start", args.cold_start, True), ("--drain-grace", args.drain_grace, True),
                                ("--read-timeout", args.read_timeout, False)):
        if not math.isfinite(value) or value < 0 or (value == 0 and not low_ok) or value > MAX_SECONDS:
            bound = ">= 0" if low_ok else "> 0"
            raise UserError(f"{flag} must be a number of seconds {bound} and at most {MAX_SECONDS:.0f}, got {value}")
    for flag in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= MAX_COUNT:
            raise UserError(f"--{flag.replace('_', '-')} must be 1..{MAX_COUNT}, got {value}")
    if args.model_name is not None and not args.model_name.strip():
        raise UserError("--model-name must not be empty")
    if args.fault_dir is not None and not Path(args.fault_dir).is_dir():
        raise UserError(f"--fault-dir {args.fault_dir}: not a folder")


def run(args: argparse.Namespace, settings) -> int:
    validate(args)
    if args.engine == "emulated":
        config = _emulator_config(args)  # profile errors before anything starts
    from server.procs import die_with_parent

    die_with_parent()  # started by `qscale run` or a test: never outlive it
    if args.engine == "emulated":
        return _serve_emulated(args, config)
    from server.launcher import launch_vllm

    return launch_vllm(args)


def _emulator_config(args: argparse.Namespace):
    from pydantic import ValidationError

    from server.emulator import EmulatorConfig
    from simulations.profile import PerformanceProfile, load_profile

    profile = load_profile(args.profile)
    overrides = {k: v for k, v in {
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
    }.items() if v is not None}
    if overrides:
        try:  # validated again: model_copy(update=...) would skip the profile's checks
            profile = PerformanceProfile(**{**profile.model_dump(), **overrides})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = f"--{str(err['loc'][0]).replace('_', '-')}: " if err["loc"] else ""
            raise UserError(f"{where}{err['msg']}".replace("Value error, ", "")) from None
    return EmulatorConfig(
        profile=profile,
        model_name=args.model_name or f"emulated/{profile.name}",
        cold_start_s=args.cold_start,
        drain_grace_s=args.drain_grace,
        read_timeout_s=args.read_timeout,
        legacy_metric_names=args.legacy_metric_names,
        fault_dir=args.fault_dir,
    )


def _serve_emulated(args: argparse.Namespace, config) -> int:
    import asyncio

    from server.emulator import serve_emulated

    ports = list(range(args.port, args.port + args.replicas))
    try:
        return asyncio.run(serve_emulated(config, args.host, ports))
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
