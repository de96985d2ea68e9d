"""The same policy on the same traffic, in the simulator and live against emulated replicas.

Tolerance (stated here, asserted below): the live and simulated desired-replica timelines,
sampled every second over the run, differ by at most 1 replica on average, and their
peaks by at most 1 replica. Live runs on the wall clock with real HTTP, a 1-s tick that
drifts, and a measured (not fixed) cold start, so exact equality is not expected.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time

import numpy as np

from policies import ScaleLimits, registry
from server.loadgen import replay
from simulations.coldstart import ColdStartModel
from simulations.profile import load_profile
from simulations.runner import SimConfig, simulate
from simulations.traffic import load_traffic
from tests.servers import free_port, http_get, qscale_process, wait_http

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
