"""The constrained search's study: its storage, creating and joining it, and the choice.

Objective: the mean GPU-hours as a multiple of each part's bound (minimized). Constraint:
the lowest SLO attainment over the parts at or above the target, given to TPE as
`target - attainment <= 0` (`Trial.set_constraint`: Optuna's constrained TPE), and applied
again when choosing: the best trial is the cheapest feasible one; when none is feasible,
the one with the highest attainment (and the report says so). A new study's first trial is
the policy's defaults (with the user's fixed values), so the choice is never worse than them
on the tuning data.

Workers share one study through its storage: a SQLite file on one machine, PostgreSQL (or
any Optuna RDB URL) across machines. Running trials send heartbeats; a trial whose worker
died (no heartbeat for `GRACE_S`) is failed by the next worker to look, and its parameters
are queued again (`trials`), so none is lost.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from policies import registry
from policies.errors import UserError
from simulations.tuning.attrs import ATTAINMENT, OVER_BUDGET, RETRY_OF
from simulations.tuning.pruning import SafePruner
from simulations.tuning.setup import SETUP_ATTR, StudySetup

optuna.logging.set_verbosity(optuna.logging.WARNING)

HEARTBEAT_S, GRACE_S = 10, 60  # a RUNNING trial silent this long has lost its worker


def storage_url(url: str) -> str:
    """`postgresql://` means psycopg 3 (the driver qscale installs), not SQLAlchemy's psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """The study's storage (its tables created on first use), with heartbeats. Two workers
    creating the tables at once collide (a unique violation in PostgreSQL's catalog): the
    loser retries and finds them made."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; qscale relies on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage_url(url), heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S,
                                                  heartbeat_stale_trial_callback=retry_failed)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # an unreachable database, a bad URL, a missing driver
            raise UserError(f"--storage {url}: {str(exc).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def retry_failed(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial that did not finish (its worker was interrupted or died): queue its parameters
    again for whichever worker asks next."""
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number}, skip_if_exists=False)


def sampler(seed: int, trials: int, worker: str = "main") -> optuna.samplers.TPESampler:
    # Each worker its own stream (same seed, same worker: the same trials); constant_liar keeps
    # concurrent workers from proposing the same point.
    stream = int(hashlib.sha256(f"{seed}/{worker}".encode()).hexdigest()[:8], 16)
    return optuna.samplers.TPESampler(seed=stream, constant_liar=True, n_startup_trials=max(4, min(10, trials // 5)))


def new_study(storage: optuna.storages.BaseStorage | None, name: str | None, seed: int, trials: int,
              slo_target: float, worker: str = "main", load_if_exists: bool = False) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=name, direction="minimize",
                               sampler=sampler(seed, trials, worker), pruner=SafePruner(slo_target),
                               load_if_exists=load_if_exists)


def create_study(storage: optuna.storages.BaseStorage, name: str, setup: StudySetup, space: dict,
                 worker: str = "main") -> optuna.Study:
    """Create the study (its first trial the defaults), or continue one made with the same
    setup (a larger `trials` raises the budget); another setup under the same name is a
    one-line error."""
    study = new_study(storage, name, setup.seed, setup.trials, setup.slo_target, worker, load_if_exists=True)
    stored = study.user_attrs.get(SETUP_ATTR)
    if stored is None:
        study.set_user_attr(SETUP_ATTR, setup.model_dump(mode="json"))
        enqueue_defaults(study, setup.policy, space)
        return study
    if not StudySetup.model_validate(stored).same_search(setup):
        raise UserError(f"study {name!r} in this storage was made with another setup (policy, traces or "
                        f"options); pick another --study name or the same options")
    study.set_user_attr(SETUP_ATTR, setup.model_dump(mode="json"))
    return study


def enqueue_defaults(study: optuna.Study, policy: str, space: dict) -> None:
    """The policy's own defaults for every searched parameter, as the first trial."""
    fields = registry.get(policy).Params.model_fields
    defaults = {name: fields[name].default for name in space}
    study.enqueue_trial({k: t.clip(defaults[k]) if not t.categorical else defaults[k] for k, t in space.items()})


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
                             pruner=SafePruner(setup.slo_target)), setup


def counted(study: optuna.Study, before: int | None = None) -> int:
    """Trials that use the budget (numbered below `before`): all but those opened past the
    budget, those waiting to run, and those whose parameters were queued again (the retry
    counts instead)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    return sum(1 for t in trials
               if (before is None or t.number < before) and t.state is not TrialState.WAITING
               and not t.user_attrs.get(OVER_BUDGET) and t.number not in retried)


def wait_for_running(study: optuna.Study, say: Callable[[str], None], poll_s: float = 2.0) -> None:
    """Until no trial runs (other workers' included): a dead worker's trial is failed after
    `GRACE_S` without a heartbeat, and then no longer waited for."""
    said = False
    while running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not said:
            say(f"waiting for {len(running)} trial(s) still running on other workers")
            said = True
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll_s)


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

