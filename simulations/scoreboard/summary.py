"""Per policy configuration, over the whole panel: cells meeting the SLO target (judged among
the requests the profile can serve, as the reference points are), worst SLO attainment (of all
requests), and the geometric mean of GPU-hours against each reference; and for hybrid, every
cell it loses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from simulations.scoreboard.run import SLO_TARGET, CellResult, Row

REFERENCES = ("bound", "oracle", "static-best")


@dataclass
class PolicySummary:
    label: str
    cells: int
    cells_meeting_slo: int
    worst_slo: float
    worst_cell: str
    geomean_x_oracle: float | None
    geomean_x_static_best: float | None
    geomean_x_bound: float | None


def _geomean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def summarize(results: list[CellResult]) -> list[PolicySummary]:
    labels = list(dict.fromkeys(row.label for r in results for row in r.rows))
    out = []
    for label in labels:
        rows = [(r.cell.name, r.row(label)) for r in results]
        worst_cell, worst = min(rows, key=lambda cr: cr[1].slo_attainment)
        out.append(PolicySummary(
            label, len(rows), sum(row.served_slo_attainment >= SLO_TARGET for _, row in rows),
            worst.slo_attainment, worst_cell,
            _geomean([row.x_oracle for _, row in rows]),
            _geomean([row.x_static_best for _, row in rows]),
            _geomean([row.x_bound for _, row in rows]),
        ))
    return out


@dataclass
class Shortfall:
    """Where hybrid misses a goal on one cell."""

    cell: str
    what: list[str] = field(default_factory=list)


def _dominates(other: Row, hybrid: Row) -> bool:
    """`other` is better on both axes: at least hybrid's SLO (or the target) at fewer GPU-hours."""
    slo_ok = other.slo_attainment > hybrid.slo_attainment or (
        other.slo_attainment >= SLO_TARGET and hybrid.slo_attainment >= SLO_TARGET)
    return slo_ok and other.gpu_hours < hybrid.gpu_hours and other.slo_attainment >= hybrid.slo_attainment - 1e-4


def shortfalls(results: list[CellResult], label: str = "hybrid") -> list[Shortfall]:
    """Every goal of the issue that `label` misses, cell by cell."""
    out = []
    for r in results:
        h = r.row(label)
        s = Shortfall(r.cell.name)
        if r.oracle_meets_target and h.served_slo_attainment < SLO_TARGET:
            s.what.append(f"SLO {h.served_slo_attainment:.2%} < {SLO_TARGET:.0%}")
        if h.x_static_best is not None and h.x_static_best > 1.0 + 1e-9:
            s.what.append(f"{h.x_static_best:.2f}x static-best")
        for row in r.rows:
            if row.label not in REFERENCES and row.label != label and _dominates(row, h):
                s.what.append(f"beaten by {row.label} ({row.slo_attainment:.2%}, {row.gpu_hours:.2f} GPU-h)")
        if s.what:
            out.append(s)
    return out
