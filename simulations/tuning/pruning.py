"""Stopping trials that cannot win, and only those (an Optuna pruner).

A trial reports at each checkpoint a floor under its final objective (GPU-hours already spent
only grow) and whether one of its parts has already missed more requests than the SLO target
allows (misses never un-happen). Either fact decides the trial: it cannot beat the best
feasible trial finished so far, or it cannot be feasible. A rule such as "worse than most at
this point" would stop trials that are dearer early and meet the SLO, the ones the constraint
is there to keep.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from simulations.tuning.attrs import ATTAINMENT, CANNOT_MEET


class SafePruner(optuna.pruners.BasePruner):
    def __init__(self, slo_target: float) -> None:
        self.slo_target = slo_target

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.user_attrs.get(CANNOT_MEET):
            return True
        step = trial.last_step
        if step is None:
            return False
        best = best_feasible(study, self.slo_target)
        return best is not None and trial.intermediate_values[step] >= best


def best_feasible(study: optuna.Study, slo_target: float) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.value is not None and t.user_attrs.get(ATTAINMENT, 0.0) >= slo_target]
    return min(values, default=None)
