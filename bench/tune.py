"""`qscale tune`'s three goals, measured on this machine.

1. holdout: hybrid tuned on the first 70 % of the Azure code trace (x20, the scoreboard's
   small load), reported on the held-out last 30 %: goal SLO attainment >= 99 % at no
   more than 1.10x `oracle` (oracle and static-best searched on the held-out part itself).
2. speed: 100 trials of hybrid on the Azure conversation trace at x10 (the whole hour,
   30 % held out), wall time of the whole command (trials, report, sensitivity): goal
   under 10 minutes.
3. workers: the same fixed number of trials run by one `qscale tune --worker` and by two
   at once against one SQLite study (the study created first, with the same setup),
   wall time until every worker has exited: goal two workers <= 0.6x one. The reference
   (one worker) is measured in the same run.

Run: python bench/tune.py [--goal holdout|speed|workers|all] [--trials N]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRACES = ROOT.parent / "shared" / "traces"
CODE, CONV = TRACES / "AzureLLMInferenceTrace_code.csv", TRACES / "AzureLLMInferenceTrace_conv.csv"


def qscale(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "qscale.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"qscale {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc, time.monotonic() - start


def goal_holdout(trials: int, folder: Path) -> None:
    proc, wall = qscale("tune", "--trace", str(CODE), "--rate-scale", "20", "--policy", "hybrid", "--trials",
                        str(trials), "--holdout", "0.3", "--out", str(folder / "code.yaml"))
    tuned = re.search(r"^  tuned\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)", proc.stdout, re.M)
    assert tuned, proc.stdout
    att, x_oracle = float(tuned.group(1)), float(tuned.group(3))
    print(proc.stdout.split("\n\nsensitivity")[0])
    ok = att >= 99.0 and x_oracle <= 1.10
    print(f"holdout: tuned hybrid {att:.2f} % at {x_oracle:.2f}x oracle on the held-out 30 % "
          f"({trials} trials, {wall:.0f} s): goal >= 99 % at <= 1.10x oracle: {'met' if ok else 'NOT met'}\n")


def goal_speed(trials: int, folder: Path) -> None:
    proc, wall = qscale("tune", "--trace", str(CONV), "--rate-scale", "10", "--policy", "hybrid", "--trials",
                        str(trials), "--out", str(folder / "conv.yaml"))
    lines = proc.stderr.splitlines()
    pruned = sum("stopped early" in line for line in lines)
    print(f"speed: {trials} trials on the conversation trace x10 (1 h, 30 % held out) in {wall:.0f} s, "
          f"report included ({pruned} stopped early): goal < 600 s: {'met' if wall < 600 else 'NOT met'}\n")


def _workers(n: int, trials: int, folder: Path) -> float:
    from simulations.tuning.parts import TraceSpec
    from simulations.tuning.setup import StudySetup
    from simulations.tuning.space import space_for
    from simulations.tuning.study import create_study, open_storage

    url = f"sqlite:///{folder / f'workers{n}.db'}"
    setup = StudySetup(policy="hybrid", traces=(TraceSpec(source=str(CONV), rate_scale=10, duration_s=1800),),
                       trials=trials, holdout=0.0)
    create_study(open_storage(url), "bench", setup, space_for("hybrid", {}, setup.max_replicas))
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "qscale.cli", "tune", "--worker", "--storage", url,
                               "--study", "bench"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n)]
    codes = [p.wait() for p in procs]
    assert codes == [0] * n, codes
    return time.monotonic() - start


def goal_workers(trials: int, folder: Path) -> None:
    one = _workers(1, trials, folder)
    two = _workers(2, trials, folder)
    ratio = two / one
    print(f"workers: {trials} trials (conversation trace x10, 30 min): one worker {one:.0f} s, two workers "
          f"{two:.0f} s: {ratio:.2f}x; goal <= 0.6x: {'met' if ratio <= 0.6 else 'NOT met'}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--goal", choices=["holdout", "speed", "workers", "all"], default="all")
    parser.add_argument("--trials", type=int, default=None, help="trials (default: 100; workers: 30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qscale-bench-tune-") as name:
        folder = Path(name)
        if args.goal in ("holdout", "all"):
            goal_holdout(args.trials or 100, folder)
        if args.goal in ("speed", "all"):
            goal_speed(args.trials or 100, folder)
        if args.goal in ("workers", "all"):
            goal_workers(args.trials or 30, folder)


if __name__ == "__main__":
    main()
