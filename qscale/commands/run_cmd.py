"""`qscale run --config FILE`: the live autoscaler."""

from __future__ import annotations

import argparse

from qscale.commands.checks import text_file

HELP = "run the autoscaler for the targets in a config file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=text_file, help="autoscaler config YAML (see examples/)")
    parser.add_argument("--shadow", action="store_true", help="decide and publish, never write")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")


def run(args: argparse.Namespace, settings) -> int:
    import asyncio

    from autoscaler.config import load_config

    config = load_config(args.config)
    if args.shadow:
        config = config.model_copy(update={"shadow": True})
    if args.check:
        print(f"{args.config}: ok ({len(config.targets)} targets)")
        return 0
    from policies.errors import UserError

    try:
        return asyncio.run(_main(config))
    except OSError as exc:  # a port in use, an unreachable API server at start
        raise UserError(f"cannot start: {exc.strerror or exc}") from None


async def _main(config) -> int:
    from autoscaler.service import AutoscalerService

    if config.leader_election:
        from autoscaler.leader import run_with_leader_election

        return await run_with_leader_election(config)
    return await AutoscalerService(config).run()
