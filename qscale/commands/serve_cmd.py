"""`qscale serve`: an emulated vLLM replica (or several), or real vLLM (CPU build or GPU)."""

from __future__ import annotations

import argparse

from policies.errors import UserError

HELP = "serve an emulated vLLM replica, or launch real vLLM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["emulated", "vllm-cpu", "vllm"], default="emulated")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--profile", default="llama3-8b-h100", help="emulated: performance profile name or YAML")
    parser.add_argument("--model-name", default=None, help="served model name")
    parser.add_argument("--cold-start", type=float, default=0.0, help="emulated: seconds before the port opens")
    parser.add_argument("--drain-grace", type=float, default=30.0, help="emulated: seconds to finish in-flight work on SIGTERM")
    parser.add_argument("--replicas", type=int, default=1, help="emulated: serve N replicas on ports PORT..PORT+N-1")
    parser.add_argument("--legacy-metric-names", action="store_true", help="emulated: pre-0.9 vLLM metric names")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="vllm-cpu: build and serve a tiny local Llama")
    parser.add_argument("--model", default=None, help="vllm: model path or name to pass through")
    parser.add_argument("--model-dir", default=None, help="vllm-cpu --tiny: where to write the tiny model")
    parser.add_argument("--python", default=None, help="python that has vllm installed (default: this one)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: passed to vLLM unchanged")


def run(args: argparse.Namespace, settings) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    if args.replicas < 1 or args.port + args.replicas - 1 > 65535:
        raise UserError("--replicas must be at least 1 and fit in the port range")
    if args.engine == "emulated":
        return _emulated(args)
    from server.launcher import launch_vllm

    return launch_vllm(args)


def _emulated(args: argparse.Namespace) -> int:
    import asyncio

    from server.emulator import EmulatorConfig, serve_emulated
    from simulations.profile import load_profile

    profile = load_profile(args.profile)
    overrides = {k: v for k, v in {
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
    }.items() if v is not None}
    if overrides:
        profile = profile.model_copy(update=overrides)
    if args.cold_start < 0 or args.drain_grace < 0:
        raise UserError("--cold-start and --drain-grace must not be negative")
    config = EmulatorConfig(
        profile=profile,
        model_name=args.model_name or f"emulated/{profile.name}",
        cold_start_s=args.cold_start,
        drain_grace_s=args.drain_grace,
        legacy_metric_names=args.legacy_metric_names,
    )
    ports = list(range(args.port, args.port + args.replicas))
    try:
        return asyncio.run(serve_emulated(config, args.host, ports))
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
