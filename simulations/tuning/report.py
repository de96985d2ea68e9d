"""What the user sees after a search: the chosen parameters against the policy's defaults,
`static-best` and `oracle` on the held-out part of each trace, and how the result moves
when each chosen parameter moves by 20 %."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.tunable import Tunable
from simulations.oracle import OracleSearch
from simulations.runner import SimResult
from simulations.tuning.parts import Part
from simulations.tuning.space import neighbours

TUNED, DEFAULTS = "tuned", "defaults"


@dataclass(frozen=True)
class Row:
    label: str
    attainment: float
    gpu_hours: float
    x_oracle: float | None
    x_static_best: float | None

    @classmethod
    def of(cls, label: str, r: SimResult) -> Row:
        return cls(label, r.served_slo_attainment, r.gpu_hours, r.ratio(r.oracle_gpu_hours),
                   r.ratio(r.static_best_gpu_hours))


@dataclass(frozen=True)
class PartReport:
    label: str  # the trace
    held_out: bool  # False: no held-out part, the tuning part itself
    rows: tuple[Row, ...]
    static_best_replicas: int
    warm_replicas: int  # what tuned and defaults started with

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


def held_out_report(parts: list[Part], policy: str, fixed: dict[str, Any], tuned: dict[str, Any],
                    slo_target: float, held_out: bool, warm: list[int] | None = None) -> list[PartReport]:
    """Per part: tuned, defaults (with the user's fixed values), static-best and oracle.
    `warm`: the fleet tuned and defaults start with on each part (the tuning part's
    static-best: sizing it on the held-out part would be looking at it); static-best and
    oracle start as always (their own first need)."""
    reports = []
    for i, part in enumerate(parts):
        bench = part.bench
        refs = bench.references(slo_target, OracleSearch())
        if warm is not None:
            bench.cfg = bench.cfg.model_copy(update={"initial_replicas": warm[i]})
        rows = []
        for label, params in ((TUNED, {**fixed, **tuned}), (DEFAULTS, fixed)):
            result = bench.run(bench.create(policy, params), label, record=False)
            refs.annotate(result)
            rows.append(Row.of(label, result))
        rows += [Row.of("static-best", refs.static_best), Row.of("oracle", refs.oracle)]
        reports.append(PartReport(part.label, held_out, tuple(rows), refs.static_best_replicas,
                                  bench.cfg.initial_replicas))
    return reports


@dataclass(frozen=True)
class Sensitivity:
    change: str  # "target_utilization +20%"
    attainment: float  # the lowest over the parts
    gpu_hours: float  # summed over the parts
    d_attainment_points: float  # against the chosen parameters, in percentage points
    d_gpu_hours_share: float  # against the chosen parameters, as a share


def sensitivity(parts: list[Part], policy: str, fixed: dict[str, Any], tuned: dict[str, Any],
                space: dict[str, Tunable]) -> list[Sensitivity]:
    """Each chosen parameter moved 20 % down and up (within its declared range), the others
    held, on the same parts the report is on."""
    def run(params: dict[str, Any]) -> tuple[float, float]:
        results = [p.bench.run(p.bench.create(policy, {**fixed, **params}), policy, record=False) for p in parts]
        return min(r.served_slo_attainment for r in results), sum(r.gpu_hours for r in results)

    base_att, base_gpu = run(tuned)
    out = []
    for name, t in space.items():
        for change, value in neighbours(name, tuned[name], t):
            att, gpu = run({**tuned, name: value})
            out.append(Sensitivity(change, att, gpu, (att - base_att) * 100, gpu / base_gpu - 1 if base_gpu else 0.0))
    return out
