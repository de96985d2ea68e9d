"""A search inside one process on one workbench (in memory): how the scoreboard finds each
baseline's best within its own parameter space, with the same objective and constraint as
`qscale tune`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from simulations.compare import Workbench
from simulations.runner import SimResult
from simulations.tuning.objective import Evaluator
from simulations.tuning.parts import Part
from simulations.tuning.space import space_for
from simulations.tuning.study import (
    ATTAINMENT,
    GPU_HOURS,
    PARAMS,
    choose,
    finished,
    pruner,
    run_trials,
    sampler,
)


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
    evaluator = Evaluator([part], policy, fixed, slo_target)
    study = optuna.create_study(direction="minimize", sampler=sampler(seed, trials), pruner=pruner())
    run_trials(study, evaluator, space_for(policy, fixed, bench.ceiling), trials)
    done = finished(study)
    best, meets = choose(done, slo_target)
    if best is None:  # every trial was stopped early or refused: the defaults, run in full
        params: dict[str, Any] = {}
    else:
        params = dict(best.user_attrs[PARAMS])
    result = bench.run(bench.create(policy, {**fixed, **params}), policy)
    tried = [(dict(t.user_attrs[PARAMS]), t.user_attrs[ATTAINMENT], t.user_attrs[GPU_HOURS]) for t in done]
    return Best(params, result, meets, tried)
