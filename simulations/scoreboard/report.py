"""The scoreboard as text (summary table, per-cell table, hybrid's shortfalls), JSON and a plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from simulations.scoreboard.run import SLO_TARGET, CellResult
from simulations.scoreboard.summary import shortfalls, summarize


def _x(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def write_summary(results: list[CellResult], out: TextIO) -> None:
    out.write(f"{'policy':<13} {'cells meeting SLO':>17} {'worst SLO':>9}  {'worst cell':<26} "
              f"{'x oracle':>8} {'x static':>8} {'x bound':>8}\n")
    for s in summarize(results):
        out.write(f"{s.label:<13} {s.cells_meeting_slo:>8} of {s.cells:<6} {s.worst_slo:>9.2%}  {s.worst_cell:<26} "
                  f"{_x(s.geomean_x_oracle):>8} {_x(s.geomean_x_static_best):>8} {_x(s.geomean_x_bound):>8}\n")
    out.write(f"(geometric means over the cells; SLO target {SLO_TARGET:.0%} of requests)\n")


def write_cells(results: list[CellResult], out: TextIO) -> None:
    for r in results:
        c = r.cell
        out.write(f"\n{c.name}  (x{c.rate_scale:g}, TTFT SLO {c.slo_ttft_s:g}s, {c.profile}, ceiling {r.ceiling}, "
                  f"static-best {r.static_best_replicas}, {r.runs} runs, {r.wall_s:.0f}s)\n")
        for row in r.rows:
            params = " ".join(f"{k}={v}" for k, v in row.params.items() if k != "engine")
            out.write(f"  {row.label:<12} SLO {row.slo_attainment:>7.2%}  rejected {row.rejected:>5}  "
                      f"GPU-h {row.gpu_hours:>7.2f}  x oracle {_x(row.x_oracle):>5}  x static {_x(row.x_static_best):>5}  "
                      f"x bound {_x(row.x_bound):>5}  {params}\n")


GEOMEAN_GOAL = 1.25  # x oracle, over the panel


def write_shortfalls(results: list[CellResult], out: TextIO, label: str = "hybrid") -> None:
    mine = next((s for s in summarize(results) if s.label == label), None)
    if mine is not None and mine.geomean_x_oracle is not None:
        verdict = "met" if mine.geomean_x_oracle <= GEOMEAN_GOAL else "NOT met"
        out.write(f"\n{label}: geometric mean {mine.geomean_x_oracle:.2f}x oracle (goal <= {GEOMEAN_GOAL}x: {verdict}); "
                  f"{mine.cells_meeting_slo} of {mine.cells} cells meet the SLO\n")
    short = shortfalls(results, label)
    out.write(f"\nwhere {label} falls short of the goals ({len(short)} of {len(results)} cells):\n")
    for s in short:
        out.write(f"  {s.cell:<28} {'; '.join(s.what)}\n")
    if not short:
        out.write("  nowhere\n")


def to_json(results: list[CellResult]) -> dict:
    return {
        "slo_target": SLO_TARGET,
        "summary": [asdict(s) for s in summarize(results)],
        "shortfalls": [asdict(s) for s in shortfalls(results)],
        "cells": [{
            "cell": asdict(r.cell) | {"name": r.cell.name},
            "ceiling": r.ceiling, "initial_replicas": r.initial_replicas,
            "static_best_replicas": r.static_best_replicas, "oracle_utilization": r.oracle_utilization,
            "oracle_meets_target": r.oracle_meets_target, "runs": r.runs, "wall_s": r.wall_s,
            "rows": [asdict(row) | {"params": {k: v for k, v in row.params.items() if k != "engine"}}
                     for row in r.rows],
            "best_search": r.tried,
        } for r in results],
    }


def write_json(results: list[CellResult], path: Path) -> None:
    path.write_text(json.dumps(to_json(results), indent=1, default=str))


def plot(results: list[CellResult], path: Path) -> None:
    """SLO attainment against GPU-hours x oracle, one panel per cell, a marker per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = (len(results) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results, strict=False):
        for row in r.rows:
            if row.x_oracle is None:
                continue
            hybrid = row.label == "hybrid"
            ax.scatter(row.x_oracle, row.slo_attainment * 100, s=60 if hybrid else 25,
                       marker="*" if hybrid else "o", color="crimson" if hybrid else None, label=row.label)
        ax.axhline(SLO_TARGET * 100, color="grey", lw=0.8, ls="--")
        ax.set_title(r.cell.name, fontsize=9)
        ax.set_xlabel("GPU-hours x oracle", fontsize=8)
        ax.set_ylabel("SLO attainment %", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
