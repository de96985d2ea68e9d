"""Subcommand registry: name -> (help, add_arguments(parser), run(args, settings) -> exit code)."""

from __future__ import annotations

from qscale.commands import (
    calibrate_cmd,
    load_cmd,
    policies_cmd,
    record_cmd,
    run_cmd,
    scoreboard_cmd,
    serve_cmd,
    simulate_cmd,
    tune_cmd,
)

COMMANDS = {
    "policies": (policies_cmd.HELP, policies_cmd.add_arguments, policies_cmd.run),
    "simulate": (simulate_cmd.HELP, simulate_cmd.add_arguments, simulate_cmd.run),
    "scoreboard": (scoreboard_cmd.HELP, scoreboard_cmd.add_arguments, scoreboard_cmd.run),
    "serve": (serve_cmd.HELP, serve_cmd.add_arguments, serve_cmd.run),
    "load": (load_cmd.HELP, load_cmd.add_arguments, load_cmd.run),
    "run": (run_cmd.HELP, run_cmd.add_arguments, run_cmd.run),
    "calibrate": (calibrate_cmd.HELP, calibrate_cmd.add_arguments, calibrate_cmd.run),
    "record": (record_cmd.HELP, record_cmd.add_arguments, record_cmd.run),
    "tune": (tune_cmd.HELP, tune_cmd.add_arguments, tune_cmd.run),
}
