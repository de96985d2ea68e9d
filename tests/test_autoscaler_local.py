"""`qscale run` with the local backend: scale up under a burst, back down after, logging why;
config errors; shadow mode; the HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import pytest

from server.loadgen import replay
from simulations.traffic import load_traffic
from tests.servers import ROOT, free_port, http_get, qscale_process, wait_http


def write_config(tmp_path, shadow=False, **overrides) -> tuple:
    api, svc, base = free_port(), free_port(), free_port()
    cfg = tmp_path / "qscale.yaml"
    cfg.write_text(textwrap.dedent(f"""
        listen: 127.0.0.1:{api}
        tick_s: 1
        shadow: {str(shadow).lower()}
        targets:
          - name: demo
            backend: local
            policy: hybrid
            params:
              min_replicas: 1
              max_replicas: 4
              default_cold_start_s: 2
              min_history_s: 0
              scale_down_stabilization_s: 8
              scale_down_period_s: 2
              level_window_s: 10
              trend_window_s: 10
              burst_history_s: 20    # forget the burst soon, so the test sees the way back down
            limits: {{min_replicas: 1, max_replicas: 4}}
            local:
              model_name: demo-model
              max_num_seqs: 4
              cold_start_s: 1
              drain_grace_s: 20
              service_port: {svc}
              base_port: {base}
    """))
    return cfg, api, svc


def scale_events(stderr: str) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("event") == "scale":
            out.append(d)
    return out


def test_scales_up_under_a_burst_and_back_down_after(tmp_path):
    cfg, api, svc = write_config(tmp_path)
    with qscale_process("run", "--config", str(cfg), env={"QSCALE_LOG_FORMAT": "json"}) as proc:
        wait_http(f"http://127.0.0.1:{api}/readyz", 30, proc)
        wait_http(f"http://127.0.0.1:{svc}/v1/models", 30, proc)
        # 12 s of 12 req/s, 200 tokens each: far beyond one replica of 4 slots.
        traffic = load_traffic("synthetic:poisson?rate=12&duration=12&seed=1&output_mean=200")
        summary = asyncio.run(replay(traffic, f"http://127.0.0.1:{svc}/v1/completions", tmp_path / "load.csv",
                                     max_output_tokens=200, max_prompt_tokens=500, timeout_s=60))
        peak = json.loads(http_get(f"http://127.0.0.1:{api}/api/v1/targets")[1])["targets"]["demo"]
        deadline = time.monotonic() + 60
        desired = None
        while time.monotonic() < deadline:
            desired = json.loads(http_get(f"http://127.0.0.1:{api}/api/v1/targets")[1])["targets"]["demo"]["desired"]
            if desired == 1:
                break
            time.sleep(1)
        metrics = http_get(f"http://127.0.0.1:{api}/metrics")[1].decode()
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert summary.ok == summary.sent > 100, summary  # nothing lost, through scale-up and drain
    events = scale_events(stderr)
    ups = [e for e in events if e["direction"] == "up"]
    downs = [e for e in events if e["direction"] == "down"]
    assert ups and max(e["desired"] for e in ups) >= 3, events
    assert downs and desired == 1, events
    assert all(e["reason"] and e["terms"] and "signals" in e for e in events)  # every scale says why
    assert peak["signals"]["ready"] >= 1
    assert 'qscale_decisions_total{direction="up"' in metrics
    assert "qscale_fleet_ttft_seconds" in metrics


def test_shadow_mode_decides_but_never_writes(tmp_path):
    cfg, api, svc = write_config(tmp_path, shadow=True)
    with qscale_process("run", "--config", str(cfg)) as proc:
        wait_http(f"http://127.0.0.1:{api}/readyz", 30, proc)
        wait_http(f"http://127.0.0.1:{svc}/v1/models", 30, proc)
        traffic = load_traffic("synthetic:poisson?rate=12&duration=6&seed=2&output_mean=200")
        asyncio.run(replay(traffic, f"http://127.0.0.1:{svc}/v1/completions", tmp_path / "load.csv",
                           max_output_tokens=200, max_prompt_tokens=500, timeout_s=60))
        state = json.loads(http_get(f"http://127.0.0.1:{api}/api/v1/targets")[1])
        seen_desire = []
        for _ in range(5):
            t = json.loads(http_get(f"http://127.0.0.1:{api}/api/v1/targets")[1])["targets"]["demo"]
            seen_desire.append((t["desired"], t["current"], t["applied"]))
            time.sleep(0.5)
    assert state["shadow"] is True
    assert all(cur == 1 and not applied for _, cur, applied in seen_desire)


def test_healthz_readyz(tmp_path):
    cfg, api, svc = write_config(tmp_path)
    with qscale_process("run", "--config", str(cfg)) as proc:
        wait_http(f"http://127.0.0.1:{api}/healthz", 30, proc)
        wait_http(f"http://127.0.0.1:{api}/readyz", 30, proc)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("targets: []\n", ["targets: List should have at least 1 item"]),
        ("targets:\n  - name: Bad_Name\n    policy: nope\n", ["targets.0.name:", "unknown policy 'nope'"]),
        ("targets:\n  - name: a\n    policy: hpa\n    params: {tolerance: lots}\n", ["hpa: tolerance"]),
        ("targets:\n  - name: a\n    backend: kubernetes\n", ["needs a 'kubernetes' section"]),
        ("tick_s: -1\nbogus: 1\ntargets:\n  - name: a\n", ["tick_s:", "bogus: unknown field"]),
        ("targets: [\n", ["not valid YAML"]),
        ("tick_s: 1e-9\ntargets:\n  - name: a\n", ["tick_s:"]),
        ("tick_s: .nan\ntargets:\n  - name: a\n", ["tick_s:"]),
        ("unhealthy_after_ticks: 1\ntargets:\n  - name: a\n", ["unhealthy_after_ticks:"]),
        ("listen: nowhere\ntargets:\n  - name: a\n", ["listen:"]),
        ("listen: 127.0.0.1:99999\ntargets:\n  - name: a\n", ["listen:"]),
        ("targets:\n  - name: a\n    local: {drain_grace_s: .inf}\n", ["targets.0.local.drain_grace_s:"]),
        ("targets:\n  - name: a\n    local: {host: 0.0.0.0}\n", ["targets.0.local.host:"]),
        ("targets:\n  - name: a\n    backend: kubernetes\n    kubernetes: {deployment: x, namespace: '../x'}\n",
         ["targets.0.kubernetes.namespace:"]),
        ("targets:\n  - name: a\n    metrics: prometheus\n    prometheus: {url: 'http://p', queries: {wait: x}}\n",
         ["unknown query fields wait"]),
    ],
)
def test_bad_config_exits_2_with_one_line_per_problem(tmp_path, yaml_text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    proc = subprocess.run([sys.executable, "-m", "qscale.cli", "run", "--config", str(cfg), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for piece in expected:
        assert piece in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == len([e for e in expected if e != "not valid YAML"]) or \
        "not valid YAML" in proc.stderr


def test_example_configs_are_valid():
    proc = subprocess.run([sys.executable, "-m", "qscale.cli", "run", "--config", "examples/local.yaml", "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
