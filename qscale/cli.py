"""The `qscale` command line. Each subcommand lives in its own module under `qscale/commands/`."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

from policies.errors import UserError
from qscale import __version__
from qscale.commands import COMMANDS
from qscale.logs import configure_logging
from qscale.settings import load_settings


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # `--start -1e5` or `--rate-scale -inf` is a (bad) value, not an unknown option: let the
        # flag's own check name what is wrong with it.
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)

    def error(self, message: str) -> None:  # one line, exit 2, as argparse does, minus the usage dump
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qscale", description="Queue-depth autoscaler for vLLM on Kubernetes")
    parser.add_argument("--version", action="version", version=f"qscale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, add_arguments, _run) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        settings = load_settings(getattr(args, "settings_file", None))
        configure_logging(settings.log_level, settings.log_format)
        run: Callable[[argparse.Namespace, object], int] = COMMANDS[args.command][2]
        return run(args, settings)
    except UserError as exc:
        print(f"qscale: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
