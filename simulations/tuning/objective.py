"""One parameter set on every tuning part: the figures the constrained search needs.

The search minimizes GPU-hours, each part's as a multiple of its `bound` (so a long or busy
trace does not outweigh the others), subject to the lowest SLO attainment over the parts
being at or above the target. Runs are checkpointed `CHECKPOINTS` times per part; at each
checkpoint the run so far is reported to the pruner (`study.SafePruner`) as two facts that
only grow with time, so stopping on them never discards a possible winner:
* the objective's lower bound so far (GPU-hours already spent, as multiples of the bounds,
  averaged over all parts): once it reaches the best feasible trial's, this one cannot win;
* whether the part can still meet the target: once more requests have certainly missed the
  SLO (first token too late, or dropped) than the target allows, it cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulations.runner import Checkpoints, Partial, SimResult
from simulations.tuning.parts import Part

CHECKPOINTS = 4  # per part: the fidelities a trial can be stopped at


@dataclass(frozen=True)
class SoFar:
    """A trial at a checkpoint."""

    step: int
    cost_floor: float  # the objective (mean x bound) can end no lower than this
    attainment: float  # lowest over the parts so far (waiting requests counted as misses)
    cannot_meet: bool  # a part has certainly missed more requests than the target allows


Report = Callable[[SoFar], None]  # raises to stop the trial
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
        allowed_misses = (1.0 - self.slo_target) * part.servable
        step = [index * CHECKPOINTS]

        def call(partial: Partial) -> None:
            step[0] += 1
            if step[0] > (index + 1) * CHECKPOINTS:
                return  # the drain after the last arrival: no new fidelity
            floor = (ratio_done + partial.gpu_hours / part.bound_gpu_hours) / len(self.parts)
            report(SoFar(step[0], floor, min(lowest, partial.attainment), partial.missed > allowed_misses))

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
