"""One parameter set on every tuning part: the figures the constrained search needs.

The search minimizes GPU-hours, each part's as a multiple of its `bound` (so a long or busy
trace does not outweigh the others), subject to the lowest SLO attainment over the parts
being at or above the target. Runs are checkpointed `CHECKPOINTS` times per part: at each
checkpoint the run so far is scored for the pruner (GPU-hours so far plus a penalty per
point of SLO shortfall, large enough that a shortfall outweighs any saving), which stops trials that are already worse than most at that point.
The penalty only decides which trials are worth finishing; which finished trial is best is
decided by the constraint itself (`study.choose`), never by trading SLO for GPU-hours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulations.runner import Checkpoints, Partial, SimResult
from simulations.tuning.parts import Part

CHECKPOINTS = 4  # per part: the fidelities a trial can be stopped at
# Pruning score per unit of attainment below target: 1 point short costs 10x bound, more than
# any cost difference between sensible configurations, so for the pruner (as for the choice)
# meeting the SLO comes first and cost second.
SHORTFALL_PENALTY = 1000.0

Report = Callable[[int, float, float], None]  # (step, score so far, attainment so far); raises to stop
Progress = Callable[[float], None]  # simulated seconds done over all parts


@dataclass(frozen=True)
class Evaluation:
    attainment: float  # the lowest served SLO attainment over the parts
    gpu_hours: float  # summed over the parts
    x_bound: float  # mean over the parts of GPU-hours / bound: the objective
    per_part: tuple[tuple[float, float], ...]  # (attainment, GPU-hours) per part

    def feasible(self, slo_target: float) -> bool:
        return self.attainment >= slo_target


class Evaluator:
    def __init__(self, parts: list[Part], policy: str, fixed: dict[str, Any], slo_target: float) -> None:
        self.parts, self.policy, self.fixed, self.slo_target = parts, policy, fixed, slo_target
        self.total_s = sum(p.duration_s for p in parts)

    @property
    def steps(self) -> int:
        return CHECKPOINTS * len(self.parts)

    def run(self, part: Part, params: dict[str, Any], checkpoints: Checkpoints | None = None) -> SimResult:
        policy = part.bench.create(self.policy, {**self.fixed, **params})
        return part.bench.run(policy, self.policy, record=False, checkpoints=checkpoints)

    def evaluate(self, params: dict[str, Any], report: Report | None = None,
                 progress: Progress | None = None) -> Evaluation:
        results: list[SimResult] = []
        done_s = 0.0
        for i, part in enumerate(self.parts):
            if progress is not None:
                part.bench.progress = _offset_bar(progress, done_s)
            cps = self._checkpoints(i, part, results, report) if report is not None else None
            try:
                results.append(self.run(part, params, cps))
            finally:
                part.bench.progress = None
            done_s += part.duration_s
        return self._evaluation(results)

    def _checkpoints(self, index: int, part: Part, done: list[SimResult], report: Report) -> Checkpoints:
        ratio_done = sum(r.gpu_hours / p.bound_gpu_hours for r, p in zip(done, self.parts, strict=False))
        lowest = min((r.served_slo_attainment for r in done), default=1.0)
        step = [index * CHECKPOINTS]

        def call(partial: Partial) -> None:
            step[0] += 1
            if step[0] > (index + 1) * CHECKPOINTS:
                return  # the drain after the last arrival: no new fidelity
            attainment = min(lowest, partial.attainment)
            shortfall = max(0.0, self.slo_target - attainment)
            score = ratio_done + partial.gpu_hours / part.bound_gpu_hours + SHORTFALL_PENALTY * shortfall
            report(step[0], score, attainment)

        return Checkpoints(part.duration_s / CHECKPOINTS, call)

    def _evaluation(self, results: list[SimResult]) -> Evaluation:
        ratios = [r.gpu_hours / p.bound_gpu_hours for r, p in zip(results, self.parts, strict=True)]
        return Evaluation(
            attainment=min(r.served_slo_attainment for r in results),
            gpu_hours=sum(r.gpu_hours for r in results),
            x_bound=sum(ratios) / len(ratios),
            per_part=tuple((r.served_slo_attainment, r.gpu_hours) for r in results),
        )


def _offset_bar(progress: Progress, offset_s: float):
    """A workbench progress factory feeding one bar over all parts."""
    class _Bar:
        def __call__(self, done: float) -> None:
            progress(offset_s + done)

    return lambda label, total: _Bar()
