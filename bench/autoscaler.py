"""Control-loop cost at scale, and the metrics parser's throughput.

1. One cycle (discover, scrape, parse, decide) over 1,000 pods on this 2-core machine.
   A helper process (core 1) serves 1,000 pods on loopback ports, each answering /metrics
   with a real vLLM 0.32 exposition (tests/data, ~600 lines, values varied per pod). The
   autoscaler side (core 0) runs the real TargetLoop with the scrape source and the hybrid
   policy; p50/p99 cycle time over 30 cycles, and its peak RSS. Goal: p99 < 1 s, < 200 MB.
2. Parser: lines per second of qscale's parser on the real exposition, against
   prometheus_client's own text parser on the same text, measured in the same run.

Run: python bench/autoscaler.py [--pods 1000] [--cycles 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXPOSITION = ROOT / "tests" / "data" / "vllm-0.32.0-cpu-metrics.txt"


async def serve_pods(base_port: int, pods: int) -> None:
    from aiohttp import web

    text = EXPOSITION.read_text()
    runners = []
    for i in range(pods):
        body = text.replace('vllm:num_requests_running{engine="0",model_name="tiny-llama"} 0.0',
                            f'vllm:num_requests_running{{engine="0",model_name="tiny-llama"}} {i % 7}.0')

        async def handler(request, body=body):
            return web.Response(text=body, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", base_port + i, backlog=64).start()
        runners.append(runner)
    print("ready", flush=True)
    await asyncio.Event().wait()


class StaticBackend:
    """A fixed set of pods; scale writes are only remembered (the loop runs in shadow mode anyway)."""

    def __init__(self, pods):
        self._pods = pods
        self.n = len(pods)

    async def start(self):
        return None

    async def pods(self):
        return self._pods

    async def current_replicas(self):
        return self.n

    async def set_replicas(self, replicas, reason, remove_first=()):
        self.n = replicas

    def router_waiting(self):
        return 0.0

    async def close(self):
        return None


async def cycles(base_port: int, pods: int, count: int) -> list[float]:
    from autoscaler.backends.base import Pod
    from autoscaler.loop import TargetLoop
    from autoscaler.metrics.scrape import ScrapeSource
    from autoscaler.telemetry import Telemetry
    from policies import ReplicaState, ScaleLimits, registry
    from policies.control import OutageRules

    now = time.time()
    plist = [Pod(f"pod-{i}", ReplicaState.READY, now - 600, f"http://127.0.0.1:{base_port + i}/metrics", now - 500)
             for i in range(pods)]
    loop = TargetLoop("bench", registry.create("hybrid", max_replicas=2000), ScaleLimits(max_replicas=2000),
                      OutageRules(), StaticBackend(plist), ScrapeSource("tiny-llama", timeout_s=5),
                      Telemetry(), shadow=True)
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        d = await loop.tick()
        times.append(time.perf_counter() - t0)
        assert not d.missing, f"{len(d.missing)} pods unreadable"
        await asyncio.sleep(0.2)
    await loop.close()
    return times


def parser_bench() -> tuple[float, float, int]:
    from prometheus_client.parser import text_string_to_metric_families

    from autoscaler.metrics.parse import parse_vllm_metrics

    text = EXPOSITION.read_text()
    lines = len(text.splitlines())
    n = 300
    t0 = time.perf_counter()
    for _ in range(n):
        parse_vllm_metrics(text, "tiny-llama")
    ours = n * lines / (time.perf_counter() - t0)
    m = 30
    t0 = time.perf_counter()
    for _ in range(m):
        for fam in text_string_to_metric_families(text):
            for _s in fam.samples:
                pass
    ref = m * lines / (time.perf_counter() - t0)
    return ours, ref, lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--base-port", type=int, default=21000)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve_pods(args.base_port, args.pods))
        return

    from qscale.logs import configure_logging

    configure_logging("warning", "console")
    ours, ref, lines = parser_bench()
    print(f"parser: {lines}-line real vLLM exposition: qscale {ours:,.0f} lines/s, "
          f"prometheus_client parser {ref:,.0f} lines/s (reference) -> {ours / ref:.1f}x")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(["taskset", "-c", "1", sys.executable, __file__, "--serve", "--pods", str(args.pods),
                               "--base-port", str(args.base_port)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {0})
        times = sorted(asyncio.run(cycles(args.base_port, args.pods, args.cycles)))
    finally:
        server.terminate()
        server.wait(10)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    p50 = times[len(times) // 2]
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"control loop: {args.pods} pods, {args.cycles} cycles (discover, scrape, parse, decide) on one core: "
          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (goal < 1000 ms); peak RSS {rss:.0f} MB (goal < 200 MB)")


if __name__ == "__main__":
    main()
