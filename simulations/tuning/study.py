"""The constrained search on an Optuna study, shared by any number of workers.

Objective: the mean GPU-hours as a multiple of each part's bound (minimized). Constraint:
the lowest SLO attainment over the parts at or above the target, given to TPE as
`target - attainment <= 0` (`Trial.set_constraint`: Optuna's constrained TPE), and applied again when choosing:
the best trial is the cheapest feasible one; when none is feasible, the one with the
highest attainment (and the report says so). Hopeless trials stop early
(`SuccessiveHalvingPruner` on the checkpoint scores, see `objective`).

Workers share one study through its storage: a SQLite file on one machine, PostgreSQL
(or any Optuna RDB URL) across machines. Trial numbers are given out by the storage, so
no two workers run the same trial; the budget is the study's total (`setup.trials`): a
trial opened when the budget is already taken is not run (told FAIL as over budget). An
interrupted trial is told FAIL and its parameters are queued again, so none is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from policies.errors import UserError
from policies.registry import PolicyConfigError
from simulations.tuning.objective import Evaluation, Evaluator
from simulations.tuning.setup import SETUP_ATTR, StudySetup
from simulations.tuning.space import suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)

ATTAINMENT, GPU_HOURS, PER_PART, CONSTRAINT = "attainment", "gpu_hours", "per_part", "slo_shortfall"
OVER_BUDGET, ERROR, WORKER, PARAMS = "over_budget", "error", "worker", "params"
INTERRUPTED, RETRY_OF = "interrupted", "retry_of"


def storage_url(url: str) -> str:
    """`postgresql://` means psycopg 3 (the driver qscale installs), not SQLAlchemy's psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """The study's storage (its tables created on first use). Two workers creating the
    tables at once collide (a unique violation in PostgreSQL's catalog): the loser retries
    and finds them made."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(storage_url(url))
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # an unreachable database, a bad URL, a missing driver
            raise UserError(f"--storage {url}: {str(exc).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def sampler(seed: int, trials: int, worker: str = "main") -> optuna.samplers.TPESampler:
    # Each worker its own stream (same seed, same worker: the same trials); constant_liar keeps
    # concurrent workers from proposing the same point.
    stream = int(hashlib.sha256(f"{seed}/{worker}".encode()).hexdigest()[:8], 16)
    return optuna.samplers.TPESampler(seed=stream, constant_liar=True, n_startup_trials=max(4, min(10, trials // 5)))


def pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


def create_study(storage: optuna.storages.BaseStorage, name: str, setup: StudySetup,
                 worker: str = "main") -> optuna.Study:
    """Create the study, or continue one made with the same setup (a larger `trials` raises
    the budget); another setup under the same name is a one-line error."""
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                sampler=sampler(setup.seed, setup.trials, worker), pruner=pruner(), load_if_exists=True)
    stored = study.user_attrs.get(SETUP_ATTR)
    if stored is None:
        study.set_user_attr(SETUP_ATTR, setup.model_dump(mode="json"))
        return study
    if not StudySetup.model_validate(stored).same_search(setup):
        raise UserError(f"study {name!r} in this storage was made with another setup (policy, traces or "
                        f"options); pick another --study name or the same options")
    study.set_user_attr(SETUP_ATTR, setup.model_dump(mode="json"))
    return study


def join_study(storage: optuna.storages.BaseStorage, name: str, worker: str,
               wait_s: float = 0.0) -> tuple[optuna.Study, StudySetup]:
    """A worker's view of a study someone else created (waits up to `wait_s` for it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            stored = study.user_attrs.get(SETUP_ATTR)
            if stored is not None:
                break
        except KeyError:
            pass
        if time.monotonic() >= deadline:
            raise UserError(f"no qscale study {name!r} in this storage (start `qscale tune` with the same "
                            f"--storage and --study first)")
        time.sleep(1.0)
    setup = StudySetup.model_validate(stored)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler(setup.seed, setup.trials, worker),
                             pruner=pruner()), setup


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
    many this call ran. Ctrl-C (or SIGTERM, see `session`) fails the running trial, queues
    its parameters again for whichever worker asks next (no point is lost), and is raised on."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    ran = 0
    while (deadline is None or time.monotonic() < deadline) and _counted(study) < budget:
        held: list[int] = []
        with _signals_held(held):  # a trial is never left RUNNING between ask and the try below
            trial = study.ask()
            over = _counted(study, before=trial.number) >= budget  # another worker took the last one
            if over:
                trial.set_user_attr(OVER_BUDGET, True)
                study.tell(trial, state=TrialState.FAIL)
            else:
                trial.set_user_attr(WORKER, worker)
        if over:
            if held:
                raise KeyboardInterrupt
            break
        try:
            if held:
                raise KeyboardInterrupt
            outcome = _one_trial(study, trial, evaluator, space, progress)
        except BaseException:
            _give_back(study, trial)
            raise
        ran += 1
        if on_trial is not None:
            on_trial(outcome)
    return ran


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
    """An interrupted trial: FAIL, not counted, and its parameters queued again."""
    with _signals_held([]):
        trial.set_user_attr(INTERRUPTED, True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})


def _one_trial(study: optuna.Study, trial: optuna.Trial, evaluator: Evaluator, space: dict,
               progress: MakeProgress | None) -> TrialOutcome:
    params = suggest(trial, space)
    last_step = [0]

    def report(step: int, score: float, attainment: float) -> None:
        last_step[0] = step
        trial.report(score, step)
        if trial.should_prune():
            # The constraint so far: what constrained TPE learns from a trial stopped here
            # (a trial's constraint is set once).
            trial.set_constraint(CONSTRAINT, evaluator.slo_target - attainment)
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


def _counted(study: optuna.Study, before: int | None = None) -> int:
    """Trials that use the budget (numbered below `before`): all but those opened past the
    budget and those interrupted (their parameters were queued again)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if (before is None or t.number < before)
               and not t.user_attrs.get(OVER_BUDGET) and not t.user_attrs.get(INTERRUPTED))


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def choose(trials: list[FrozenTrial], slo_target: float) -> tuple[FrozenTrial | None, bool]:
    """(best trial, whether it meets the target): the cheapest feasible, else the highest attainment."""
    feasible = [t for t in trials if t.user_attrs[ATTAINMENT] >= slo_target]
    if feasible:
        return min(feasible, key=lambda t: (t.value, t.number)), True
    if not trials:
        return None, False
    return max(trials, key=lambda t: (t.user_attrs[ATTAINMENT], -t.number)), False
