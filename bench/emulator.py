"""Emulator overhead: how many emulated replicas one core sustains, and whether their TTFT
matches what the simulator predicts for the same load.

N emulated replicas run in one process pinned to core 0 (`qscale serve --replicas N`); the
load generator, pinned to core 1, replays a Poisson trace at R requests/s per replica,
round robin over the replicas, streaming every response. The same trace (written to a
CSV both read) runs through the simulator on N static replicas: its TTFT is the reference.

Run: python bench/emulator.py [--replicas 50] [--rate-per-replica 2] [--duration 60]
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_trace(path: Path, rate: float, duration: float, output_tokens: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate * duration)
    arrival = np.sort(rng.uniform(0, duration, n))
    prompt = np.clip(rng.lognormal(np.log(1155) - 0.32, 0.8, n), 16, 4000).astype(int)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp_s", "input_tokens", "output_tokens"])
        for a, p in zip(arrival, prompt, strict=True):
            w.writerow([f"{a:.6f}", p, output_tokens])


def simulated(trace: Path, replicas: int) -> dict:
    from policies import registry
    from simulations.coldstart import ColdStartModel
    from simulations.profile import load_profile
    from simulations.runner import SimConfig, simulate
    from simulations.traffic import load_traffic

    cfg = SimConfig(profile=load_profile("llama3-8b-h100"), cold_start=ColdStartModel.fixed_total(0),
                    initial_replicas=replicas, warmup_s=1e9)
    r = simulate(load_traffic(str(trace)), registry.create("static", replicas=replicas, max_replicas=replicas), cfg)
    return {"ttft_p50": r.ttft_p50_s, "ttft_p90": r.ttft_p90_s, "requests": r.requests}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=50)
    ap.add_argument("--rate-per-replica", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--port", type=int, default=18000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="qscale-bench-"))
    trace = tmp / "trace.csv"
    write_trace(trace, args.rate_per_replica * args.replicas, args.duration, args.output_tokens)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "qscale.cli", "serve", "--port",
                               str(args.port), "--replicas", str(args.replicas)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{args.port + args.replicas - 1}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        out = tmp / "load.csv"
        urls = []
        for i in range(args.replicas):
            urls += ["--url", f"http://127.0.0.1:{args.port + i}"]
        t0 = time.monotonic()
        load = subprocess.run(["taskset", "-c", "1", sys.executable, "-m", "qscale.cli", "load", "--trace",
                               str(trace), *urls, "--duration", str(args.duration), "--out", str(out),
                               "--max-requests", "1000000"], env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if load.returncode != 0:
            sys.exit(f"load generator failed: {load.stderr.strip()[-300:]}")
        server_cpu = _proc_cpu_seconds(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    with out.open() as f:
        rows = list(csv.DictReader(f))
    ok = [r for r in rows if r["status"] == "200" and r["ttft_s"]]
    ttft = np.array([float(r["ttft_s"]) for r in ok])
    sim = simulated(trace, args.replicas)
    print(f"emulator: {args.replicas} replicas in one process on one core, "
          f"{args.rate_per_replica:g} req/s each ({args.replicas * args.rate_per_replica:g} req/s), "
          f"{args.output_tokens} streamed tokens per request, {args.duration:g}s")
    print(f"  requests: {len(rows)} sent, {len(ok)} ok; server CPU {server_cpu:.1f}s over {wall:.1f}s wall "
          f"= {server_cpu / wall:.0%} of one core")
    print(f"  TTFT p50: emulated {np.median(ttft) * 1000:.1f} ms, simulated {sim['ttft_p50'] * 1000:.1f} ms "
          f"(reference) -> ratio {np.median(ttft) / sim['ttft_p50']:.2f}")
    print(f"  TTFT p90: emulated {np.quantile(ttft, 0.9) * 1000:.1f} ms, simulated {sim['ttft_p90'] * 1000:.1f} ms "
          f"-> ratio {np.quantile(ttft, 0.9) / sim['ttft_p90']:.2f}")
    print("  (emulated TTFT includes HTTP and event-loop time on the loaded core; the goal is within 10 %)")


def _proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().split(")")[-1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks


if __name__ == "__main__":
    main()
