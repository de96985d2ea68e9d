"""The Prometheus metric source against a real Prometheus server scraping emulated replicas."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
import urllib.request

import pytest

from autoscaler.backends.base import Pod
from autoscaler.config import PrometheusSource as PrometheusSettings
from autoscaler.metrics.prometheus import PrometheusSource
from autoscaler.metrics.scrape import ScrapeSource
from policies import ReplicaState
from tests.prometheus import prometheus_server
from tests.servers import free_port, free_port_run, qscale_process, wait_http


@pytest.fixture(scope="module")
def replicas():
    port = free_port_run(2)
    with qscale_process("serve", "--port", str(port), "--replicas", "2", "--max-num-seqs", "2",
                        "--model-name", "m") as proc:
        wait_http(f"http://127.0.0.1:{port + 1}/health", 30, proc)
        yield [port, port + 1]


@pytest.fixture(scope="module")
def prometheus(replicas, tmp_path_factory):
    with prometheus_server(tmp_path_factory.mktemp("prom"), textwrap.dedent(f"""
        global: {{scrape_interval: 1s, evaluation_interval: 1s}}
        scrape_configs:
          - job_name: vllm
            static_configs:
              - targets: ["127.0.0.1:{replicas[0]}"]
                labels: {{pod: replica-a}}
              - targets: ["127.0.0.1:{replicas[1]}"]
                labels: {{pod: replica-b}}
    """)) as url:
        yield url


def pods(replicas):
    now = time.time()
    return [Pod("replica-a", ReplicaState.READY, now, f"http://127.0.0.1:{replicas[0]}/metrics"),
            Pod("replica-b", ReplicaState.READY, now, f"http://127.0.0.1:{replicas[1]}/metrics"),
            Pod("replica-c", ReplicaState.READY, now, "http://127.0.0.1:1/metrics")]  # Prometheus never saw it


def _load(port: int, n: int = 6) -> list[threading.Thread]:
    def one():
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                     data=b'{"prompt": "x", "max_tokens": 2000}',
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).read()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_prometheus_source_agrees_with_a_direct_scrape(replicas, prometheus):
    source = PrometheusSource(PrometheusSettings(url=prometheus), model_name="m")
    threads = _load(replicas[0])
    try:
        deadline = time.monotonic() + 40
        got = None
        while time.monotonic() < deadline:
            got = asyncio.run(source.read(pods(replicas)))
            snap = got.figures.get("replica-a")
            # Prometheus picks up targets and scrapes them on its own schedule: wait for both.
            if snap is not None and snap.waiting > 0 and got.figures.get("replica-b") is not None:
                break
            time.sleep(0.5)
        assert got is not None
        a = got.figures["replica-a"]
        assert a is not None and a.running == 2 and a.waiting == 4  # max_num_seqs 2, 6 in flight
        assert got.figures["replica-b"].running == 0
        assert got.figures["replica-c"] is None and "no series" in got.errors["replica-c"]
        assert 0 <= got.age_s < 5

        async def direct():
            s = ScrapeSource("m")
            try:
                return await s.read(pods(replicas)[:2])
            finally:
                await s.close()

        d = asyncio.run(direct()).figures["replica-a"]
        assert (d.running, d.waiting) == (a.running, a.waiting)
        assert abs(d.requests_finished - (a.requests_finished or 0)) <= 2
    finally:
        for t in threads:
            t.join(60)


def test_prometheus_down_marks_every_pod_missing(replicas):
    source = PrometheusSource(PrometheusSettings(url=f"http://127.0.0.1:{free_port()}"), model_name="m")
    got = asyncio.run(source.read(pods(replicas)))
    assert all(v is None for v in got.figures.values())
    assert all(e.startswith("prometheus:") for e in got.errors.values())
