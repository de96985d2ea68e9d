"""One `qscale tune` run from start to end: the study, the trials, the choice, the report
and the files; and a worker's run (trials only)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from optuna.trial import TrialState

from policies.errors import UserError
from qscale.progress import ProgressBar
from simulations.tuning.objective import CHECKPOINTS, Evaluator
from simulations.tuning.outputs import config_text, plot_pareto, report_lines
from simulations.tuning.parts import Part, build_part, split
from simulations.tuning.report import held_out_report, sensitivity
from simulations.tuning.setup import StudySetup
from simulations.tuning.space import space_for
from simulations.tuning.study import (
    PARAMS,
    TrialOutcome,
    choose,
    create_study,
    finished,
    join_study,
    open_storage,
    run_trials,
)

Say = Callable[[str], None]
INTERRUPTED = 130


def tuning_parts(setup: StudySetup) -> list[Part]:
    """The tuning part of every trace, each on its own workbench, warm-started like the report."""
    cfg = setup.sim_config()
    return [build_part(spec.label, split(spec, setup.holdout)[0], cfg, setup.max_replicas, setup.slo_target)
            for spec in setup.traces]


def held_out_parts(setup: StudySetup) -> list[Part]:
    """The held-out part of every trace (none at `holdout` 0); the report warm-starts them."""
    cfg = setup.sim_config()
    held = [(spec.label, split(spec, setup.holdout)[1]) for spec in setup.traces]
    return [build_part(label, h, cfg, setup.max_replicas, None) for label, h in held if h is not None]


def _trials(study, setup: StudySetup, worker: str, timeout_s: float | None, say: Say) -> None:
    """Run this process's share of the study's trials, one line and one bar per trial."""
    tune = tuning_parts(setup)
    evaluator = Evaluator(tune, setup.policy, setup.fixed, setup.slo_target)
    space = space_for(setup.policy, setup.fixed, setup.max_replicas)
    steps = evaluator.steps
    bars: dict[int, ProgressBar] = {}

    def progress(number: int):
        bars[number] = ProgressBar(f"trial {number}", evaluator.total_s, unit="sim s")
        return bars[number]

    def on_trial(o: TrialOutcome) -> None:
        bar = bars.pop(o.number, None)
        if bar is not None:
            bar.close()
        say(_trial_line(o, setup, steps))

    say(f"tuning {setup.policy} on {len(tune)} trace(s): {', '.join(sorted(space))}")
    run_trials(study, evaluator, space, setup.trials, worker, timeout_s, on_trial, progress)


def _trial_line(o: TrialOutcome, setup: StudySetup, steps: int) -> str:
    head = f"trial {o.number + 1}/{setup.trials}"
    if o.state is TrialState.PRUNED:
        return f"{head}: stopped early at slice {o.pruned_at}/{steps} (worse than most there)"
    if o.state is TrialState.FAIL:
        return f"{head}: refused by the policy: {o.error}"
    ev = o.evaluation
    assert ev is not None
    mark = "meets" if ev.feasible(setup.slo_target) else "misses"
    return (f"{head}: SLO {ev.attainment:.2%} ({mark} {setup.slo_target:.1%}), {ev.gpu_hours:.2f} GPU-h, "
            f"{ev.x_bound:.2f}x bound")


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM (a pod being stopped) ends the trials as Ctrl-C does: the running trial is
    given back and the best so far is written."""
    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def tune(setup: StudySetup, storage_url: str, name: str, out: Path, plot: Path, timeout_s: float | None,
         say: Say) -> int:
    storage = open_storage(storage_url)
    study = create_study(storage, name, setup)
    started = time.monotonic()
    interrupted = False
    try:
        with _stop_signals_interrupt():
            _trials(study, setup, "main", timeout_s, say)
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: keeping the best trial so far (no held-out report)")
    best, meets = choose(finished(study), setup.slo_target)
    if best is None and interrupted:
        say("interrupted before any trial finished: nothing written")
        return INTERRUPTED
    if best is None:
        raise UserError(f"no trial finished in study {name!r}: nothing to write (raise --trials or --timeout)")
    params = dict(best.user_attrs[PARAMS])
    header = _header(setup, name, storage_url, best.number, meets, time.monotonic() - started)
    if not meets:
        say(f"warning: no trial met the SLO target {setup.slo_target:.1%}; wrote the one with the highest "
            f"attainment ({best.user_attrs['attainment']:.2%})")
    # Written now, so a Ctrl-C during the report still leaves the best config on disk.
    out.write_text(config_text(setup, params, header))
    plot_pareto(finished(study), best, setup.slo_target, plot, f"{setup.policy} on "
                f"{', '.join(t.label for t in setup.traces)}: {len(finished(study))} finished trials")
    if not interrupted:
        out.write_text(config_text(setup, params, header + _report(setup, params, say)))
    say(f"wrote {out} (check it: qscale run --config {out} --check) and {plot}")
    return INTERRUPTED if interrupted else 0


def _header(setup: StudySetup, name: str, storage: str, number: int, meets: bool, wall_s: float) -> list[str]:
    traces = ", ".join(f"{t.source} x{t.rate_scale:g}" for t in setup.traces)
    return [f"qscale tune: {setup.policy} on {traces}",
            f"study {name!r} in {storage}; chosen: trial {number + 1} "
            f"({'meets' if meets else 'MISSES'} SLO {setup.slo_target:.1%} at TTFT {setup.slo_ttft_s:g} s); "
            f"this run took {wall_s:.0f} s",
            f"profile {setup.profile}, cold start {setup.cold_start_s if setup.cold_start_s is not None else 'profile'}, "
            f"held out: last {setup.holdout:.0%} of each trace", ""]


def _reported_in_sample(setup: StudySetup) -> list[Part]:
    """Nothing held out: the report is on the tuning parts themselves (references rerun)."""
    cfg = setup.sim_config()
    return [build_part(spec.label, spec, cfg, setup.max_replicas, None) for spec in setup.traces]


def _report(setup: StudySetup, params: dict, say: Say) -> list[str]:
    """The held-out comparison and the sensitivity, printed and returned for the file."""
    held = held_out_parts(setup)
    parts = held or _reported_in_sample(setup)
    space = space_for(setup.policy, setup.fixed, setup.max_replicas)
    say("held-out report: tuned, defaults, static-best and oracle ...")
    lines = report_lines(held_out_report(parts, setup.policy, setup.fixed, params, setup.slo_target,
                                         bool(held)), setup.slo_target)
    say("sensitivity: each chosen parameter moved 20 % ...")
    lines += ["", "sensitivity (each chosen parameter moved, the others held; same parts):"]
    for s in sensitivity(parts, setup.policy, setup.fixed, params, space):
        lines.append(f"  {s.change:<32} SLO {s.attainment:>7.2%} ({s.d_attainment_points:+.2f} pt)  "
                     f"GPU-h {s.gpu_hours:>7.2f} ({s.d_gpu_hours_share:+.1%})")
    for line in lines:
        print(line)
    return lines + [""]


def work(storage_url: str, name: str, worker: str, timeout_s: float | None, wait_s: float, say: Say) -> int:
    storage = open_storage(storage_url)
    study, setup = join_study(storage, name, worker, wait_s)
    try:
        with _stop_signals_interrupt():
            _trials(study, setup, worker, timeout_s, say)
    except KeyboardInterrupt:
        say("interrupted")
        return INTERRUPTED
    return 0


__all__ = ["CHECKPOINTS", "tune", "work"]
