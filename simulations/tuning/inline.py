"""A search inside one process on one workbench (in memory): how the scoreboard finds each
baseline's best within its own parameter space, with the same objective, constraint and
pruning as `qscale tune` (the defaults are its first trial)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulations.compare import Workbench
from simulations.runner import SimResult
from simulations.tuning.attrs import ATTAINMENT, GPU_HOURS, PARAMS
from simulations.tuning.objective import Evaluator
from simulations.tuning.parts import Part
from simulations.tuning.space import space_for
from simulations.tuning.study import choose, enqueue_defaults, finished, new_study
from simulations.tuning.trials import run_trials


@dataclass
class Best:
    params: dict[str, Any]
    result: SimResult  # the chosen parameters' run on the workbench
    meets: bool
    tried: list[tuple[dict[str, Any], float, float]] = field(default_factory=list)  # params, SLO, GPU-h


def tune_on_bench(bench: Workbench, policy: str, slo_target: float, trials: int, seed: int = 0,
                  fixed: dict[str, Any] | None = None) -> Best:
    fixed = fixed or {}
    part = Part(policy, None, bench, max(bench.work.duration_s, 1.0))
    space = space_for(policy, fixed, bench.ceiling)
    study = new_study(None, None, seed, trials, slo_target)
    enqueue_defaults(study, policy, space)
    run_trials(study, Evaluator([part], policy, fixed, slo_target), space, trials)
    done = finished(study)
    best, meets = choose(done, slo_target)
    params = dict(best.user_attrs[PARAMS]) if best is not None else {}  # none finished: the defaults
    result = bench.run(bench.create(policy, {**fixed, **params}), policy)
    tried = [(dict(t.user_attrs[PARAMS]), t.user_attrs[ATTAINMENT], t.user_attrs[GPU_HOURS]) for t in done]
    return Best(params, result, meets, tried)
