"""The external metrics API's latency over TLS with authentication on, as the HPA reads it.

The server (this process, core 0): the real AutoscalerService, `authentication: delegated`, a
CA-signed serving certificate, the request-header CA read from the Kubernetes API double's
kube-system/extension-apiserver-authentication, SubjectAccessReview answered by the double
(cached 10 s, as Kubernetes' delegating authorizer). The client (a second process, core 1):
an aiohttp pool of keep-alive TLS connections presenting the aggregator's client certificate
with X-Remote-User/X-Remote-Group, as kube-aggregator sends them, paced open-loop at `--rate`
requests per second; each latency counts from the request's scheduled start, so a stall
delays the requests queued behind it too.

Measured in the same run, in alternating 2-s blocks so both see the same machine:
* `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/llm/inference_queue_depth?labelSelector=...`
  (authenticated, authorized, answered);
* `GET /healthz` on the same server and connections (open path: TLS and HTTP only) - the reference.
Goal: p99 under 5 ms at 500 requests per second.

Run: python bench/external_metrics.py [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
HPA_GROUPS = ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
METRIC = "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/inference_queue_depth?labelSelector=target%3Dchat"
BLOCK_S = 2.0


# --- the client process -------------------------------------------------------------------


async def paced(session, url: str, headers: list[tuple[str, str]], rate: float, seconds: float) -> list[float]:
    """Latencies (s) of `rate` x `seconds` requests started on schedule, whatever the answers take."""
    latencies: list[float] = []
    failures: list[str] = []

    async def one(due: float) -> None:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with session.get(url, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    failures.append(f"{r.status}")
        except Exception as exc:  # counted, reported
            failures.append(type(exc).__name__)
        latencies.append(time.perf_counter() - due)

    start = time.perf_counter() + 0.05
    await asyncio.gather(*(one(start + i / rate) for i in range(int(rate * seconds))))
    if failures:
        raise SystemExit(f"{len(failures)} requests failed: {sorted(set(failures))}")
    return latencies


async def client(args) -> None:
    import aiohttp

    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    headers = [("X-Remote-User", HPA_USER)] + [("X-Remote-Group", g) for g in HPA_GROUPS]
    base = f"https://127.0.0.1:{args.port}"
    out: dict[str, list[float]] = {"metric": [], "healthz": []}
    connector = aiohttp.TCPConnector(ssl=ctx, limit=32)
    async with aiohttp.ClientSession(connector=connector) as s:
        await paced(s, base + METRIC, headers, args.rate, 1.0)  # warm-up: connections, caches
        for _ in range(max(1, round(args.seconds / BLOCK_S))):
            out["metric"] += await paced(s, base + METRIC, headers, args.rate, BLOCK_S)
            out["healthz"] += await paced(s, base + "/healthz", headers, args.rate, BLOCK_S)
    print(json.dumps(out))


# --- the server process -------------------------------------------------------------------


def pki(folder: Path) -> dict[str, str]:
    from autoscaler.apiauth.tls import issue

    serving_ca, rh_ca = issue("bench-serving-ca", is_ca=True), issue("front-proxy-ca", is_ca=True)
    files = {"serving": issue("qscale", serving_ca, hosts=("127.0.0.1",)),
             "aggregator": issue("front-proxy-client", rh_ca, client=True)}
    paths = {}
    for name, pair in files.items():
        (folder / f"{name}.crt").write_bytes(pair.cert_pem)
        (folder / f"{name}.key").write_bytes(pair.key_pem)
        paths[name] = str(folder / name)
    (folder / "serving-ca.crt").write_bytes(serving_ca.cert_pem)
    paths["ca"] = str(folder / "serving-ca.crt")
    paths["requestheader_ca"] = rh_ca.cert_pem.decode()
    return paths


def kube_double(requestheader_ca: str):
    from tests.k8s_double import AccessRule, KubeDouble, extension_apiserver_authentication

    double = KubeDouble()
    double.start()
    double.configmaps[("kube-system", "extension-apiserver-authentication")] = extension_apiserver_authentication(
        requestheader_ca, ["front-proxy-client"])
    double.auth.rules = [AccessRule(users=(HPA_USER,), verbs=("get", "list"), api_groups=("external.metrics.k8s.io",),
                                    resources=("*",))]
    return double


class _Idle:
    """A backend whose ticks fail, so the decision set for the bench stays the served one."""

    async def start(self):
        return None

    async def pods(self):
        raise ConnectionError("bench: no pods")

    async def current_replicas(self):
        return 2

    async def set_replicas(self, replicas, reason, remove_first=()):
        return None

    def router_waiting(self):
        return 0.0

    async def close(self):
        return None


def service(files: dict[str, str], api_port: int, port: int):
    from autoscaler.config import AutoscalerConfig
    from autoscaler.loop import LastDecision
    from autoscaler.service import AutoscalerService
    from policies import Signals
    from tests.servers import free_port

    config = AutoscalerConfig(
        listen=f"127.0.0.1:{port}", tick_s=3600, authentication="delegated",
        tls_cert_file=files["serving"] + ".crt", tls_key_file=files["serving"] + ".key",
        kube_api_url=f"http://127.0.0.1:{api_port}",
        targets=[{"name": "chat", "policy": "static", "params": {"replicas": 2},
                  "local": {"service_port": free_port(), "base_port": free_port()}}])
    svc = AutoscalerService(config)
    svc.loops[0].backend = _Idle()
    signals = Signals(time=0.0, replicas=(), current_replicas=2, total_waiting=23, total_running=8, ready_replicas=2,
                      starting_replicas=0, draining_replicas=0, mean_kv_cache_usage=0.5, arrival_rate=3.0,
                      completion_rate=3.0, complete=True)
    svc.loops[0].last = LastDecision(time.time(), 2, 5, 5, "bench", False, True, [], None, {}, signals, {})
    return svc


def quantiles(values: list[float]) -> tuple[float, float, float]:
    v = sorted(values)
    return v[len(v) // 2], v[min(len(v) - 1, int(len(v) * 0.99))], v[-1]


def run_client(files: dict[str, str], port: int, args) -> dict[str, list[float]]:
    cmd = [sys.executable, __file__, "--client", "--port", str(port), "--rate", str(args.rate),
           "--seconds", str(args.seconds), "--ca", files["ca"], "--cert", files["aggregator"] + ".crt",
           "--key", files["aggregator"] + ".key"]
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        cmd = ["taskset", "-c", str(cores[1]), *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 3 + 60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"client failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


async def serve_and_measure(files: dict[str, str], api_port: int, args) -> dict[str, list[float]]:
    from tests.servers import free_port

    port = free_port()
    svc = service(files, api_port, port)
    stop = asyncio.Event()
    task = asyncio.ensure_future(svc.run(until=stop))
    await asyncio.sleep(1.0)  # listening
    try:
        return await asyncio.to_thread(run_client, files, port, args)
    finally:
        stop.set()
        await task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--port", "--ca", "--cert", "--key"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        asyncio.run(client(args))
        return

    from qscale.logs import configure_logging

    configure_logging("critical", "console")
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})
    with tempfile.TemporaryDirectory(prefix="qscale-bench-") as folder:
        files = pki(Path(folder))
        double = kube_double(files["requestheader_ca"])
        try:
            out = asyncio.run(serve_and_measure(files, double.port, args))
        finally:
            double.stop()
    reviews = sum(1 for a in double.auth.asked if a["kind"] == "SubjectAccessReview")
    m50, m99, mmax = quantiles(out["metric"])
    h50, h99, hmax = quantiles(out["healthz"])
    print(f"external metrics API over TLS, authenticated (aggregator client cert + X-Remote-User, "
          f"SubjectAccessReview cached 10 s: {reviews} asked), {args.rate:.0f} req/s from a second process, "
          f"{len(out['metric'])} requests: p50 {m50 * 1000:.2f} ms, p99 {m99 * 1000:.2f} ms, max {mmax * 1000:.1f} ms "
          f"(goal p99 < 5 ms)")
    print(f"/healthz on the same server and connections (reference), {len(out['healthz'])} requests: "
          f"p50 {h50 * 1000:.2f} ms, p99 {h99 * 1000:.2f} ms, max {hmax * 1000:.1f} ms "
          f"-> p99 {m99 / h99:.2f}x the reference")


if __name__ == "__main__":
    main()
