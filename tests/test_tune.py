"""`qscale tune`: the declared search space, the constrained choice, Ctrl-C, and a study
shared by two workers through a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from pydantic import Field

from policies import Decision, Policy, PolicyParams, registry
from policies.errors import UserError
from policies.tunable import Tunable, search_space
from server.procs import spawn, stop_tree
from simulations.compare import Workbench
from simulations.tuning import session
from simulations.tuning.attrs import ATTAINMENT, INTERRUPTED, OVER_BUDGET, RETRY_OF, WORKER
from simulations.tuning.parts import TraceSpec, split
from simulations.tuning.setup import StudySetup
from simulations.tuning.space import neighbours, space_for
from simulations.tuning.study import choose, open_storage
from tests.postgres import postgres
from tests.servers import ROOT, qscale_process

TRACE = "synthetic:poisson?rate=12&duration=900&seed=5"


class FleetParams(PolicyParams):
    """A third-party policy's parameters: one declared tunable, one not."""

    max_replicas: int = 20
    replicas: Annotated[int, Tunable(1, 7, integer=True)] = 7
    note: float = Field(1.0, gt=0)  # not declared: the tuner never moves it


class FixedFleet(Policy):
    """Holds `replicas`: the cheapest count that meets the SLO is the whole answer."""

    name = "test-fixed-fleet"
    Params = FleetParams

    def decide(self, signals) -> Decision:
        return Decision(self.bounded(self.params.replicas), "fixed")


class Undeclared(Policy):
    name = "test-undeclared"
    Params = PolicyParams

    def decide(self, signals) -> Decision:
        return Decision(1, "one")


for _cls in (FixedFleet, Undeclared):
    if _cls.name not in registry.names():
        registry.register(_cls)


def _setup(**kw) -> StudySetup:
    base = dict(policy=FixedFleet.name, traces=(TraceSpec(source=TRACE),), cold_start_s=60.0, max_replicas=20,
                trials=14, holdout=0.3, slo_ttft_s=0.25, seed=3)
    return StudySetup(**{**base, **kw})


# --- the search space -----------------------------------------------------------------


def test_a_plugin_policy_declares_its_space_on_its_params():
    assert search_space(FleetParams) == {"replicas": Tunable(1, 7, integer=True)}
    assert space_for(FixedFleet.name, {}, ceiling=20) == {"replicas": Tunable(1, 7, integer=True)}
    with pytest.raises(UserError, match="fixed by --set"):
        space_for(FixedFleet.name, {"replicas": 3}, ceiling=20)
    with pytest.raises(UserError, match="declares no Tunable"):
        space_for(Undeclared.name, {}, ceiling=20)


def test_min_replicas_is_searched_below_the_ceiling():
    assert space_for("hybrid", {}, ceiling=4)["min_replicas"] == Tunable(0, 3, integer=True)
    assert space_for("hybrid", {}, ceiling=100)["min_replicas"] == Tunable(0, 99, integer=True)
    assert "min_replicas" not in space_for("hybrid", {}, ceiling=1)


@pytest.mark.parametrize("bad", [dict(low=2, high=1), dict(low=0, high=5, log=True), dict(low=1),
                                 dict(low=float("nan"), high=2)])
def test_a_bad_range_is_refused_where_it_is_declared(bad):
    with pytest.raises(ValueError):
        Tunable(**bad)


def test_neighbours_move_twenty_percent_within_the_range():
    t = Tunable(0.5, 1.2)
    assert neighbours("u", 0.9, t) == [("u 0.9 -> 0.72", 0.72), ("u 0.9 -> 1.08", 1.08)]
    assert neighbours("u", 1.1, t) == [("u 1.1 -> 0.88", 0.88), ("u 1.1 -> 1.2", 1.2)]  # clipped at 1.2
    assert neighbours("n", 2, Tunable(0, 8, integer=True)) == [("n 2 -> 1", 1), ("n 2 -> 3", 3)]
    assert neighbours("m", "waiting", Tunable(choices=("waiting", "in_flight"))) == [("m=in_flight", "in_flight")]


# --- the constrained choice --------------------------------------------------------------


def _trial(number: int, x_bound: float, attainment: float):
    t = create_trial(value=x_bound, params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)},
                     user_attrs={ATTAINMENT: attainment})
    t.number = number
    return t


def test_the_cheapest_trial_that_meets_the_target_wins_not_the_cheapest():
    trials = [_trial(0, 1.10, 0.95), _trial(1, 1.40, 0.991), _trial(2, 1.30, 0.995), _trial(3, 2.0, 1.0)]
    best, meets = choose(trials, 0.99)
    assert (best.number, meets) == (2, True)


def test_when_none_meets_the_target_the_highest_attainment_is_kept_and_flagged():
    best, meets = choose([_trial(0, 1.0, 0.90), _trial(1, 3.0, 0.97), _trial(2, 2.0, 0.95)], 0.99)
    assert (best.number, meets) == (1, False)
    assert choose([], 0.99) == (None, False)


@pytest.mark.parametrize("slo_target", [0.99, 0.995])
def test_tuning_finds_the_smallest_fleet_that_meets_the_target(tmp_path, slo_target):
    """The expected count comes from running every count (1-7) on the tuning part through the
    simulator's workbench, not from the tuner; cheaper counts that miss must exist, so the
    constraint is what decides, and the pruner must not stop the dearer trials that meet it
    (at 0.995 the answer sits above counts that look better early)."""
    setup = _setup(slo_target=slo_target)
    tune_spec, _ = split(setup.traces[0], setup.holdout)
    bench = Workbench(lambda: tune_spec.traffic(), setup.sim_config(), setup.max_replicas)
    bench.warm_start_from_static_best(setup.slo_target)  # the warm start every compared run gets
    attained = {n: bench.run(bench.create(FixedFleet.name, {"replicas": n}), "x", record=False).served_slo_attainment
                for n in range(1, 8)}
    expected = min(n for n, a in attained.items() if a >= setup.slo_target)
    assert expected > 1 and attained[expected - 1] < setup.slo_target, attained

    out = tmp_path / "tuned.yaml"
    code = session.tune(setup, f"sqlite:///{tmp_path / 'study.db'}", "s", out, tmp_path / "p.png", None, lambda s: None)
    assert code == 0
    from autoscaler.config import load_config

    target = load_config(str(out)).targets[0]
    assert (target.policy, target.params) == (FixedFleet.name, {"max_replicas": 20, "replicas": expected})
    text = out.read_text()
    assert "held-out part" in text and "static-best" in text and "oracle" in text and "sensitivity" in text
    assert (tmp_path / "p.png").stat().st_size > 10_000
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.trials[0].params == {"replicas": 7}  # the policy's default runs first


def test_the_held_out_part_is_unseen_and_inside_the_slice(tmp_path):
    """Arrivals every second from 0 to 99 s; the slice [10, 60) s; 30 % held out."""
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp_s,input_tokens,output_tokens\n" + "".join(f"{t},100,10\n" for t in range(100)))
    spec = TraceSpec(source=str(trace), start_s=10, duration_s=50)
    tune, held = split(spec, 0.3)

    def seconds(part):
        return [round(float(a) + part.start_s) for c in part.traffic() for a in c.arrival]

    # span 49 s (10..59), cut at 34.3 s: tuning 10..44, held-out 45..59; nothing from 60 on.
    assert seconds(tune) == list(range(10, 45)) and seconds(held) == list(range(45, 60))
    assert split(spec, 0.0) == (spec, None)


def test_the_budget_counts_retries_once_and_a_queued_retry_runs(tmp_path):
    """A trial interrupted mid-run (FAIL, parameters queued again) leaves the study short by
    one; the next run picks the queued retry up and the study reaches its budget."""
    from simulations.tuning.study import counted, create_study
    from simulations.tuning.trials import run_trials

    setup = _setup(trials=3)
    space = space_for(FixedFleet.name, {}, 20)
    study = create_study(open_storage(f"sqlite:///{tmp_path / 'study.db'}"), "s", setup, space)
    evaluator = session.Evaluator(session.tuning_parts(setup), FixedFleet.name, {}, setup.slo_target)
    run_trials(study, evaluator, space, budget=2)
    stopped = study.ask()
    stopped.set_user_attr(INTERRUPTED, True)
    study.tell(stopped, state=TrialState.FAIL)
    study.enqueue_trial({"replicas": 5}, user_attrs={RETRY_OF: stopped.number})
    assert counted(study) == 2  # two finished; the interrupted one and its queued retry: not yet
    assert run_trials(study, evaluator, space, budget=3) == 1 and counted(study) == 3
    (retry,) = [t for t in study.trials if t.user_attrs.get(RETRY_OF) == stopped.number]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and retry.params == {"replicas": 5}


def test_the_config_limits_follow_fixed_values(tmp_path):
    from simulations.tuning.outputs import config_text

    text = config_text(_setup(policy="hybrid", fixed={"min_replicas": 3, "max_replicas": 40}),
                       {"target_utilization": 0.8}, [])
    import yaml

    (target,) = yaml.safe_load(text)["targets"]
    assert target["limits"] == {"min_replicas": 3, "max_replicas": 40}
    assert target["params"] == {"max_replicas": 40, "min_replicas": 3, "target_utilization": 0.8}


def test_another_setup_under_the_same_study_name_is_refused(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    from simulations.tuning.study import create_study

    space = space_for(FixedFleet.name, {}, 20)
    create_study(storage, "s", _setup(), space)
    create_study(storage, "s", _setup(trials=40), space)  # a larger budget continues the same search
    with pytest.raises(UserError, match="another setup"):
        create_study(storage, "s", _setup(slo_target=0.95), space)


# --- the command: errors, Ctrl-C ----------------------------------------------------------


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qscale.cli", "tune", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--policy", "hybrid", "--out", "x.yaml"], "--trace is required"),
    (["--trace", TRACE, "--out", "x.yaml"], "--policy is required"),
    (["--trace", TRACE, "--policy", "oracle", "--out", "x.yaml"], "reference point"),
    (["--trace", TRACE, "--policy", "nope", "--out", "x.yaml"], "unknown policy"),
    (["--trace", TRACE, "--policy", "static", "--out", "x.yaml"], "declares no Tunable"),
    (["--worker", "--storage", "sqlite:///x.db"], "--worker needs --storage and --study"),
    (["--worker", "--storage", "sqlite:///x.db", "--study", "s", "--trace", TRACE], "drop --trace"),
    (["--trace", TRACE, "--policy", "hybrid", "--out", "x.txt"], "expected a .yaml or .yml path"),
    (["--trace", TRACE, "--policy", "hybrid", "--out", "x.yaml", "--holdout", "1"], "--holdout"),
    (["--trace", TRACE, "--policy", "hybrid", "--out", "x.yaml", "--set", "hybrid.nope=1"], "nope"),
    (["--trace", TRACE, "--policy", "hybrid", "--out", "x.yaml", "--cold-start", "60", "--storage",
      "postgresql://u@127.0.0.1:1/db"], "--storage"),
    (["--trace", TRACE, "--policy", "hybrid", "--out", "x.yaml", "--holdout", "0.9"], "shorter than the warm-up"),
    (["--worker", "--storage", "sqlite:///x.db", "--study", "s", "--slo-target", "0.9"], "drop --slo-target"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    args = [str(tmp_path / a) if a in ("x.yaml", "x.txt") else a for a in args]
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def _finished(db: Path) -> int:
    try:
        study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    except Exception:
        return 0
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


def test_ctrl_c_keeps_the_best_trial_so_far(tmp_path):
    db, out = tmp_path / "study.db", tmp_path / "tuned.yaml"
    with qscale_process("tune", "--trace", TRACE, "--policy", "hybrid", "--cold-start", "60", "--trials", "500",
                        "--storage", f"sqlite:///{db}", "--study", "s", "--out", str(out)) as proc:
        deadline = time.monotonic() + 120
        while _finished(db) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "no trials finished"
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        assert code == 130, proc.stderr.read()[-3000:]
    text = out.read_text()
    assert "policy: hybrid" in text and "held-out part" not in text
    r = subprocess.run([sys.executable, "-m", "qscale.cli", "run", "--config", str(out), "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert not study.get_trials(states=(TrialState.RUNNING,)), "the interrupted trial was left running"
    # The interrupted trial's parameters wait for the next worker: no point is lost.
    # (Almost always a trial is running when the signal lands; between two trials none is.)
    stopped = [t for t in study.get_trials() if t.user_attrs.get(INTERRUPTED)]
    again = study.get_trials(states=(TrialState.WAITING,))
    assert len(stopped) <= 1 and len(again) == len(stopped)
    for s, a in zip(stopped, again, strict=True):
        # what had been drawn when the signal came (a trial stopped mid-draw has fewer)
        assert a.user_attrs[RETRY_OF] == s.number and a.system_attrs["fixed_params"].items() <= s.params.items()


# --- two workers, one PostgreSQL study ----------------------------------------------------


def test_two_workers_share_one_study_in_postgres(tmp_path):
    """Each trial number 0..N-1 runs exactly once, on one worker; both workers take part."""
    trials = 12
    with postgres() as url:
        main = [sys.executable, "-m", "qscale.cli", "tune", "--trace", TRACE, "--policy", "hybrid",
                "--cold-start", "60", "--trials", str(trials), "--holdout", "0.3", "--storage", url,
                "--study", "shared", "--out", str(tmp_path / "tuned.yaml")]
        worker = [sys.executable, "-m", "qscale.cli", "tune", "--worker", "--storage", url, "--study", "shared"]
        procs = [spawn(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True) for cmd in (main, worker)]
        try:
            logs = [p.communicate(timeout=300)[1] for p in procs]
        finally:
            for p in procs:
                stop_tree(p, grace_s=5)
        assert [p.returncode for p in procs] == [0, 0], logs
        study = optuna.load_study(study_name="shared", storage=url.replace("postgresql://", "postgresql+psycopg://"))
        all_trials = study.get_trials()
    ran = [t for t in all_trials if not t.user_attrs.get(OVER_BUDGET)]
    assert sorted(t.number for t in ran) == list(range(trials))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ran), [t.state for t in ran]
    workers = {t.user_attrs[WORKER] for t in ran}
    assert len(workers) == 2, workers
    # What each process said it ran: together every trial once.
    said = [line.split(":")[0].split()[1].split("/")[0] for log in logs for line in log.splitlines()
            if line.startswith("trial ")]
    assert sorted(int(n) for n in said) == list(range(1, trials + 1)), logs
    assert len(all_trials) - len(ran) <= 1  # at most one trial opened past the budget, never run
