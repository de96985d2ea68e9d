"""`qscale tune`: placeholder, being written."""

from __future__ import annotations

import argparse

HELP = "tune (not yet written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, settings) -> int:
    raise NotImplementedError
