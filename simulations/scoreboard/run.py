"""Run one panel cell: references, hybrid, and every baseline at blog defaults and at its best."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from policies import ScaleLimits
from simulations.coldstart import ColdStartModel
from simulations.compare import Workbench
from simulations.oracle import OracleSearch, peak_replicas
from simulations.profile import load_profile
from simulations.references import References
from simulations.runner import SimConfig, SimResult
from simulations.scoreboard.panel import Cell
from simulations.scoreboard.search import BLOG, TUNED
from simulations.traffic import load_traffic
from simulations.tuning.inline import tune_on_bench

SLO_TARGET = 0.99


@dataclass
class Row:
    """One policy configuration on one cell."""

    label: str  # "hybrid", "hpa (blog)", "hpa (best)", "oracle", ...
    policy: str
    params: dict[str, Any]
    slo_attainment: float
    served_slo_attainment: float  # among requests the profile can serve: what the target is judged on
    rejected: int
    dropped: int
    gpu_hours: float
    x_oracle: float | None
    x_bound: float | None
    x_static_best: float | None
    ttft_p99_s: float | None
    scale_events: int

    @classmethod
    def of(cls, label: str, policy: str, params: dict[str, Any], r: SimResult) -> Row:
        return cls(label, policy, params, r.slo_attainment, r.served_slo_attainment, r.rejected, r.dropped, r.gpu_hours,
                   r.ratio(r.oracle_gpu_hours), r.ratio(r.bound_gpu_hours), r.ratio(r.static_best_gpu_hours),
                   r.ttft_p99_s, r.scale_events)


@dataclass
class CellResult:
    cell: Cell
    rows: list[Row]
    ceiling: int
    initial_replicas: int
    static_best_replicas: int
    oracle_utilization: float | None
    oracle_meets_target: bool
    runs: int
    wall_s: float
    tried: dict[str, list] = field(default_factory=dict)  # best searches: every config run

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


def workbench(cell: Cell) -> Workbench:
    profile = load_profile(cell.profile)
    cfg = SimConfig(profile=profile, cold_start=ColdStartModel.fixed_total(cell.cold_start_s),
                    slo_ttft_s=cell.slo_ttft_s, limits=ScaleLimits(min_replicas=0, max_replicas=1000))

    def traffic():
        return load_traffic(cell.trace, cell.rate_scale, 0.0, cell.duration_s)

    from simulations.work import TraceWork

    # Every policy gets the same ceiling, comfortably above the peak need (counted without
    # prefix-cache hits: the best case the bound assumes is far from what a fleet sees).
    peak = peak_replicas(TraceWork(traffic(), profile, prefix_caching=False), 0.7)
    ceiling = max(8, int(peak * 1.5) + 2)
    cfg = cfg.model_copy(update={"limits": ScaleLimits(min_replicas=0, max_replicas=ceiling)})
    return Workbench(traffic, cfg, ceiling)


def run_cell(cell: Cell, oracle_steps: int = 4, tune_trials: int = 24) -> CellResult:
    start = time.monotonic()
    bench = workbench(cell)
    refs = bench.references(SLO_TARGET, OracleSearch(steps=oracle_steps))
    rows = [Row.of(name, name, {}, r) for name, r in refs.rows().items()]
    # Hybrid at its defaults; its `engine` (the hardware) comes from the cell's profile.
    rows.append(_run(bench, refs, "hybrid", "hybrid", {}))
    tried: dict[str, list] = {}
    for name, params in BLOG.items():
        rows.append(_run(bench, refs, f"{name} (blog)", name, params))
    for name in TUNED:
        # At its best: `qscale tune`'s search within the policy's own declared space.
        best = tune_on_bench(bench, name, SLO_TARGET, tune_trials)
        refs.annotate(best.result)
        rows.append(Row.of(f"{name} (best)", name, best.params, best.result))
        tried[name] = best.tried
    oracle_ok = refs.oracle.meets(SLO_TARGET)
    return CellResult(cell, rows, bench.ceiling, bench.cfg.initial_replicas, refs.static_best_replicas,
                      refs.oracle_utilization, oracle_ok, bench.runs, time.monotonic() - start, tried)


def _run(bench: Workbench, refs: References, label: str, name: str, params: dict[str, Any]) -> Row:
    result = bench.run(bench.create(name, params), label)
    refs.annotate(result)
    return Row.of(label, name, params, result)


def _expected_cost(cell: Cell) -> float:
    return cell.rate_scale * (cell.duration_s or 3600.0) * (8.0 if cell.trace.startswith("synthetic:") else 1.0)


def run_panel(cells: list[Cell], workers: int | None = None,
              on_done: Callable[[CellResult, int, int], None] | None = None, **kw: Any) -> list[CellResult]:
    """Every cell, in parallel processes (one per core by default); results in panel order."""
    workers = workers or os.cpu_count() or 1
    results: dict[int, CellResult] = {}
    if workers == 1:
        for i, cell in enumerate(cells):
            results[i] = run_cell(cell, **kw)
            if on_done:
                on_done(results[i], len(results), len(cells))
        return [results[i] for i in range(len(cells))]
    # Longest first (about requests x searches), so no long cell starts last on an idle pool.
    order = sorted(range(len(cells)), key=lambda i: -_expected_cost(cells[i]))
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(run_cell, cells[i], **kw): i for i in order}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            if on_done:
                on_done(results[futures[fut]], len(results), len(cells))
    return [results[i] for i in range(len(cells))]
