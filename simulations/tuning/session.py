"""One `qscale tune` run from start to end: the study, the trials, the choice, the report
and the files; and a worker's run (trials only)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from optuna.trial import TrialState

from qscale.progress import ProgressBar
from simulations.tuning.attrs import ATTAINMENT, PARAMS
from simulations.tuning.objective import Evaluator
from simulations.tuning.outputs import config_text, plot_pareto, report_lines
from simulations.tuning.parts import Part, build_part, check_long_enough, split
from simulations.tuning.report import DEFAULTS, TUNED, PartReport, held_out_report, sensitivity
from simulations.tuning.setup import StudySetup
from simulations.tuning.space import space_for
from simulations.tuning.study import (
    choose,
    counted,
    create_study,
    finished,
    join_study,
    open_storage,
    wait_for_running,
)
from simulations.tuning.trials import TrialOutcome, run_trials

Say = Callable[[str], None]
INTERRUPTED = 130


def check_parts(setup: StudySetup) -> None:
    needed = setup.sim_config().warmup_s + setup.sim_config().cold_start.upper()
    for spec in setup.traces:
        check_long_enough(spec, setup.holdout, needed)


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


def _trials(study, setup: StudySetup, parts: list[Part], worker: str, timeout_s: float | None, say: Say) -> None:
    """Run this process's share of the study's trials, one line and one bar per trial."""
    evaluator = Evaluator(parts, setup.policy, setup.fixed, setup.slo_target)
    space = space_for(setup.policy, setup.fixed, setup.max_replicas)
    bars: dict[int, ProgressBar] = {}

    def progress(number: int):
        bars[number] = ProgressBar(f"trial {number + 1}", evaluator.total_s, unit="sim s")
        return bars[number]

    def on_trial(o: TrialOutcome) -> None:
        bar = bars.pop(o.number, None)
        if bar is not None:
            bar.close()
        say(_trial_line(o, setup, evaluator.steps))

    done = counted(study)
    if done >= setup.trials:
        say(f"the study already holds {done} of {setup.trials} trials: nothing to run (raise --trials for more)")
        return
    say(f"tuning {setup.policy} on {len(parts)} trace(s), {setup.trials - done} trial(s) to go: "
        f"{', '.join(sorted(space))}")
    run_trials(study, evaluator, space, setup.trials, worker, timeout_s, on_trial, progress)


def _trial_line(o: TrialOutcome, setup: StudySetup, steps: int) -> str:
    head = f"trial {o.number + 1}"
    if o.state is TrialState.PRUNED:
        return f"{head}: stopped at slice {o.pruned_at}/{steps}: it can no longer meet the SLO or beat the best"
    if o.state is TrialState.FAIL:
        return f"{head}: refused by the policy: {o.error}"
    ev = o.evaluation
    assert ev is not None
    mark = "meets" if ev.feasible(setup.slo_target) else "misses"
    return (f"{head}: SLO {ev.attainment:.2%} ({mark} {setup.slo_target:.1%}), {ev.gpu_hours:.2f} GPU-h, "
            f"{ev.x_bound:.2f}x bound")


def tune(setup: StudySetup, storage_url: str, name: str, out: Path, plot: Path, timeout_s: float | None,
         say: Say) -> int:
    space = space_for(setup.policy, setup.fixed, setup.max_replicas)
    check_parts(setup)
    study = create_study(open_storage(storage_url), name, setup, space)
    started = time.monotonic()
    parts = tuning_parts(setup)
    interrupted = False
    try:
        with _stop_signals_interrupt():
            _trials(study, setup, parts, "main", timeout_s, say)
            wait_for_running(study, say)  # other workers' last trials belong to the choice
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: keeping the best trial so far (no held-out report)")
    best, meets = choose(finished(study), setup.slo_target)
    if best is None:
        say("no trial finished: nothing written" + ("" if interrupted else " (raise --trials or --timeout)"))
        return INTERRUPTED if interrupted else 1
    params = dict(best.user_attrs[PARAMS])
    header = _header(setup, name, storage_url, best.number, meets, time.monotonic() - started)
    if not meets:
        say(f"warning: no trial met the SLO target {setup.slo_target:.1%} on the tuning data; wrote the one "
            f"with the highest attainment ({best.user_attrs[ATTAINMENT]:.2%})")
    # Written now, so a Ctrl-C during the report still leaves the best config on disk.
    out.write_text(config_text(setup, params, header))
    plot_pareto(finished(study), best, setup.slo_target, plot, f"{setup.policy} on "
                f"{', '.join(t.label for t in setup.traces)}: {len(finished(study))} finished trials")
    if not interrupted:
        warm = [p.bench.cfg.initial_replicas for p in parts]
        out.write_text(config_text(setup, params, header + _report(setup, params, warm, say)))
    say(f"wrote {out} (check it: qscale run --config {out} --check) and {plot}")
    return INTERRUPTED if interrupted else 0


def _header(setup: StudySetup, name: str, storage: str, number: int, meets: bool, wall_s: float) -> list[str]:
    traces = ", ".join(f"{t.source} x{t.rate_scale:g}" for t in setup.traces)
    return [f"qscale tune: {setup.policy} on {traces}",
            f"study {name!r} in {storage}; chosen: trial {number + 1} "
            f"({'meets' if meets else 'MISSES'} SLO {setup.slo_target:.1%} at TTFT {setup.slo_ttft_s:g} s "
            f"on the tuning data); this run took {wall_s:.0f} s",
            f"profile {setup.profile}, cold start {setup.cold_start_s if setup.cold_start_s is not None else 'profile'}, "
            f"held out: last {setup.holdout:.0%} of each trace", ""]


def _reported_in_sample(setup: StudySetup) -> list[Part]:
    """Nothing held out: the report is on the tuning parts themselves (references rerun)."""
    cfg = setup.sim_config()
    return [build_part(spec.label, spec, cfg, setup.max_replicas, None) for spec in setup.traces]


def _report(setup: StudySetup, params: dict, warm: list[int], say: Say) -> list[str]:
    """The held-out comparison and the sensitivity, printed and returned for the file."""
    held = held_out_parts(setup)
    parts = held or _reported_in_sample(setup)
    space = space_for(setup.policy, setup.fixed, setup.max_replicas)
    say(f"report on the {'held-out' if held else 'tuning (nothing held out)'} part: tuned, defaults, "
        f"static-best and oracle ...")
    reports = held_out_report(parts, setup.policy, setup.fixed, params, setup.slo_target, bool(held), warm)
    lines = report_lines(reports, setup.slo_target) + _losses(reports, setup.slo_target)
    say("sensitivity: each chosen parameter moved 20 % ...")
    lines += ["", "sensitivity (each chosen parameter moved, the others held; same parts):"]
    for s in sensitivity(parts, setup.policy, setup.fixed, params, space):
        lines.append(f"  {s.change:<36} SLO {s.attainment:>7.2%} ({s.d_attainment_points:+.2f} pt)  "
                     f"GPU-h {s.gpu_hours:>7.2f} ({s.d_gpu_hours_share:+.1%})")
    for line in lines:
        print(line)
    return lines + [""]


def _losses(reports: list[PartReport], slo_target: float) -> list[str]:
    """Where the tuned parameters do worse than the defaults: said, not hidden."""
    out = []
    for rep in reports:
        tuned, defaults = rep.row(TUNED), rep.row(DEFAULTS)
        if defaults.attainment >= slo_target and (tuned.attainment < slo_target or tuned.gpu_hours > defaults.gpu_hours):
            out.append(f"warning: on {rep.label} the defaults do better than the tuned parameters "
                       f"({defaults.attainment:.2%} at {defaults.gpu_hours:.2f} GPU-h against {tuned.attainment:.2%} "
                       f"at {tuned.gpu_hours:.2f}): the tuning did not generalize here")
    return out


def work(storage_url: str, name: str, worker: str, timeout_s: float | None, wait_s: float, say: Say) -> int:
    study, setup = join_study(open_storage(storage_url), name, worker, wait_s)
    try:
        with _stop_signals_interrupt():
            _trials(study, setup, tuning_parts(setup), worker, timeout_s, say)
    except KeyboardInterrupt:
        say("interrupted")
        return INTERRUPTED
    return 0
