"""Fidelity: does the simulator's replica model, calibrated on a live vLLM, predict that server?

1. Start real vLLM (CPU build, the medium tiny model: ~7 ms decode steps, so the engine rather
   than the api server's streaming is most of the time, as on a GPU; `--max-num-seqs` 4, so
   queues form).
2. `qscale calibrate` it (its own random prompts) and write the fitted profile.
3. Replay a trace slice calibration never used (`qscale load`'s replay, token-id prompts)
   against it; simulate the same slice on one replica of the fitted profile.
4. Serve the fitted profile with the emulator and replay the same slice against it too.
5. Print TTFT and end-to-end p50/p90, measured vs simulated (and emulator vs real) as ratios.
   Goal: every ratio within 10 % (GOAL); the figures print either way.

Run: python bench/fidelity.py [--duration 120] [--out out/fidelity.json]   (about 4 minutes)
The machine must be otherwise idle: the server, the load generator and the emulator share its cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.calibrate.calibrate import run_calibration  # noqa: E402
from server.calibrate.fidelity import (  # noqa: E402
    FIGURES,
    Latencies,
    Slice,
    as_sent,
    ratios,
    replay_slice,
    simulated,
    table,
)
from server.launcher import default_vllm_python  # noqa: E402
from server.procs import spawn, stop_tree  # noqa: E402
from simulations.profile import load_profile  # noqa: E402
from tests.servers import free_port  # noqa: E402

GOAL = 0.10
TRACE = str(ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv")


def wait_ready(url: str, proc, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1.0) as resp:
            if resp.status == 200:
                return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s")


@contextlib.contextmanager
def serving(args: list[str], timeout_s: float):
    """`qscale serve ARGS` on a free port: (base URL, seconds until healthy); stopped with its tree."""
    port = free_port()
    proc = spawn([sys.executable, "-m", "qscale.cli", "serve", "--port", str(port), *args], cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        yield base, wait_ready(f"{base}/health", proc, timeout_s)
    finally:
        stop_tree(proc, 10.0)


def measure(args: argparse.Namespace, out_dir: Path) -> dict:
    piece = Slice(args.trace, args.start, args.duration, args.rate_scale, args.max_prompt, args.max_output)
    profile_path = out_dir / "fidelity-profile.yaml"
    vllm = ["--engine", "vllm-cpu", "--tiny", "--tiny-size", "medium", "--python", default_vllm_python(),
            "--max-num-seqs", str(args.max_num_seqs)]
    with serving(vllm, 600) as (base, ready_s):
        print(f"real vLLM ready in {ready_s:.1f}s; calibrating ...", flush=True)
        cal = run_calibration(base, "tiny-llama-cpu", budget_s=args.calibration_budget)
        from qscale.commands.calibrate_cmd import profile_yaml

        profile_path.write_text(profile_yaml(cal))
        print(f"calibrated in {cal.duration_s:.0f}s: p90 residual {cal.fit.quantile(0.9):.1%}; replaying ...", flush=True)
        real = replay_slice(base, piece, out_dir / "fidelity-real.csv")
    profile = load_profile(str(profile_path))
    model = simulated(as_sent(out_dir / "fidelity-real.csv", piece.chunks()), profile)
    with serving(["--profile", str(profile_path), "--model-name", "tiny-llama"], 60) as (base, _):
        print("replaying against the emulator ...", flush=True)
        emulated = replay_slice(base, piece, out_dir / "fidelity-emulator.csv")
    return {"real": real, "simulated": model, "emulated": emulated, "profile": str(profile_path),
            "calibration_s": cal.duration_s, "slice": piece.__dict__}


def report(found: dict) -> tuple[str, dict]:
    real, model, emulated = found["real"], found["simulated"], found["emulated"]
    rows = {"simulator vs real vLLM": (real, model), "emulator vs real vLLM": (real, emulated)}
    lines = [table(rows), ""]
    summary = {}
    for name, (live, other) in rows.items():
        r = ratios(live, other)
        misses = [k for k in FIGURES if abs(r[k] - 1) > GOAL]
        lines.append(f"{name}: " + ("every ratio within 10 %" if not misses else
                                    f"NOT within 10 %: {', '.join(f'{k} {r[k]:.2f}' for k in misses)}"))
        summary[name] = r
    return "\n".join(lines), summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=TRACE)
    ap.add_argument("--start", type=float, default=1200.0, help="slice start, seconds into the trace")
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--rate-scale", type=float, default=0.2, help="of the trace's rate (default: ~60 %% busy)")
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--max-output", type=int, default=256)
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--calibration-budget", type=float, default=120.0)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "fidelity.json")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    found = measure(args, args.out.parent)
    text, summary = report(found)
    print(text)
    payload = {k: (v.as_dict() if isinstance(v, Latencies) else v) for k, v in found.items()}
    args.out.write_text(json.dumps({**payload, "ratios": summary, "goal": GOAL}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
