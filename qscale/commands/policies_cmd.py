"""`qscale policies`: list the registered policies and their parameters with defaults."""

from __future__ import annotations

import argparse
import json

HELP = "list scaling policies and their parameters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show one policy only")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, settings: object) -> int:
    from policies import registry

    names = [args.name] if args.name else registry.names()
    table = {}
    for name in names:
        cls = registry.get(name)
        table[name] = {
            "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            "params": cls.Params().model_dump(mode="json"),
        }
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for name, info in table.items():
        print(f"{name}: {info['doc']}")
        for key, value in info["params"].items():
            print(f"    {key} = {json.dumps(value)}")
    return 0
