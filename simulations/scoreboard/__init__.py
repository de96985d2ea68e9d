"""The scoreboard: every policy, at blog defaults and at its best, on a panel of traffic shapes,
measured against `bound`, `static-best` and `oracle`."""

from simulations.scoreboard.panel import Cell, default_panel
from simulations.scoreboard.run import CellResult, Row, run_cell, run_panel
from simulations.scoreboard.summary import PolicySummary, summarize

__all__ = ["Cell", "CellResult", "PolicySummary", "Row", "default_panel", "run_cell", "run_panel", "summarize"]
