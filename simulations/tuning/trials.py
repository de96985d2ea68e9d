"""Running trials: one worker's loop over a shared study.

Each trial: ask the study (it may hand out a queued retry), draw the parameters, run every
tuning part with checkpoints (`SafePruner` may stop it), tell the result. While it runs, a
heartbeat marks it alive. Ctrl-C or SIGTERM fails the running trial, queues its parameters
again (`study.retry_failed`) and is raised on; no trial is left RUNNING. The budget is the
study's total: a trial opened once it is taken is told FAIL as over budget, not run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from policies.registry import PolicyConfigError
from simulations.tuning.attrs import (
    ATTAINMENT,
    CANNOT_MEET,
    CONSTRAINT,
    ERROR,
    GPU_HOURS,
    INTERRUPTED,
    OVER_BUDGET,
    PARAMS,
    PER_PART,
    WORKER,
)
from simulations.tuning.objective import Evaluation, Evaluator, SoFar
from simulations.tuning.space import suggest
from simulations.tuning.study import HEARTBEAT_S, counted, retry_failed


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: TrialState
    params: dict[str, Any]
    evaluation: Evaluation | None
    pruned_at: int | None = None
    error: str | None = None


OnTrial = Callable[[TrialOutcome], None]
MakeProgress = Callable[[int], Callable[[float], None] | None]


def run_trials(study: optuna.Study, evaluator: Evaluator, space: dict, budget: int, worker: str = "main",
               timeout_s: float | None = None, on_trial: OnTrial | None = None,
               progress: MakeProgress | None = None) -> int:
    """Run trials until the study holds `budget` of them or `timeout_s` passes; returns how
    many this call ran."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    ran = 0
    while (deadline is None or time.monotonic() < deadline) and counted(study) < budget:
        _fail_stale(study)
        held: list[int] = []
        with _signals_held(held):  # a trial is never left RUNNING between ask and the try below
            with warnings.catch_warnings():  # heartbeats are sent by `_heartbeat`, as `optimize` would
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                trial = study.ask()
            over = counted(study, before=trial.number) >= budget  # another worker took the last one
            trial.set_user_attr(OVER_BUDGET if over else WORKER, True if over else worker)
            if over:
                study.tell(trial, state=TrialState.FAIL)
        if over:
            if held:
                raise KeyboardInterrupt
            break
        try:
            if held:
                raise KeyboardInterrupt
            with _heartbeat(study, trial):
                outcome = _one_trial(study, trial, evaluator, space, progress)
        except BaseException:
            _give_back(study, trial)
            raise
        ran += 1
        if on_trial is not None:
            on_trial(outcome)
    return ran


def _fail_stale(study: optuna.Study) -> None:
    """Trials whose worker died (no heartbeat for the grace period): FAIL, and queued again."""
    if isinstance(study._storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Tell the storage every `HEARTBEAT_S` that this trial's worker is alive."""
    storage = study._storage
    if not isinstance(storage, optuna.storages.RDBStorage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _signals_held(held: list[int]) -> Iterator[None]:
    """Hold SIGINT and SIGTERM where an interruption would orphan a trial: one that comes
    meanwhile is appended to `held`, for the caller to act on where it can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
           for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _give_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """An interrupted trial: FAIL, and its parameters queued again (it no longer counts)."""
    with _signals_held([]):
        trial.set_user_attr(INTERRUPTED, True)
        study.tell(trial, state=TrialState.FAIL)
        retry_failed(study, study._storage.get_trial(trial._trial_id))


def _one_trial(study: optuna.Study, trial: optuna.Trial, evaluator: Evaluator, space: dict,
               progress: MakeProgress | None) -> TrialOutcome:
    params = suggest(trial, space)
    last_step = [0]

    def report(so_far: SoFar) -> None:
        last_step[0] = so_far.step
        if so_far.cannot_meet:
            trial.set_user_attr(CANNOT_MEET, True)
        trial.report(so_far.cost_floor, so_far.step)
        if trial.should_prune():
            # What constrained TPE learns from a trial stopped here (set once per trial).
            trial.set_constraint(CONSTRAINT, evaluator.slo_target - so_far.attainment)
            raise optuna.TrialPruned()

    try:
        evaluation = evaluator.evaluate(params, report, progress(trial.number) if progress else None)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialOutcome(trial.number, TrialState.PRUNED, params, None, last_step[0])
    except PolicyConfigError as exc:  # a combination the policy refuses: not a result
        trial.set_user_attr(ERROR, str(exc))
        study.tell(trial, state=TrialState.FAIL)
        return TrialOutcome(trial.number, TrialState.FAIL, params, None, error=str(exc))
    trial.set_user_attr(PARAMS, params)  # as run (rounded; `trial.params` holds what was drawn)
    _record(trial, evaluation, evaluator.slo_target)
    study.tell(trial, evaluation.x_bound)
    return TrialOutcome(trial.number, TrialState.COMPLETE, params, evaluation)


def _record(trial: optuna.Trial, ev: Evaluation, slo_target: float) -> None:
    trial.set_user_attr(ATTAINMENT, ev.attainment)
    trial.set_user_attr(GPU_HOURS, ev.gpu_hours)
    trial.set_user_attr(PER_PART, [list(p) for p in ev.per_part])
    trial.set_constraint(CONSTRAINT, slo_target - ev.attainment)
