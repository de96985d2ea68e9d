"""The emulated vLLM server: API, metrics that match the model, cold start, drain."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.emulator import EmulatedServer, EmulatorConfig
from simulations.profile import load_profile
from tests.servers import free_port, http_get, qscale_process, wait_http

H100 = load_profile("llama3-8b-h100")


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, **labels) -> float:
    for s in fams[name].samples:
        if s.name.endswith(("_created", "_bucket")):
            continue
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(name)


async def _with_server(fn, **config):
    srv = EmulatedServer(EmulatorConfig(profile=config.pop("profile", H100), **config))
    from aiohttp import web

    runner = srv.make_runner()
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            return await fn(srv, session, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_completion_timing_follows_the_replica_model():
    async def body(srv, session, base):
        t0 = time.perf_counter()
        async with session.post(f"{base}/v1/completions", json={"prompt": "w " * 2000, "max_tokens": 200}) as r:
            data = await r.json()
        took = time.perf_counter() - t0
        return data, took

    data, took = asyncio.run(_with_server(body))
    assert data["usage"] == {"prompt_tokens": 2000, "completion_tokens": 200, "total_tokens": 2200}
    expected = H100.step_time(2000, 0, 0) + H100.decode_steps_time(199, 1, 2001)
    assert expected * 0.95 < took < expected + 0.25


def test_metrics_match_the_model_state():
    async def body(srv, session, base):
        async def one(n):
            async with session.post(f"{base}/v1/completions", json={"prompt": "x " * n, "max_tokens": 300}) as r:
                return await r.json()

        tasks = [asyncio.create_task(one(100 + i)) for i in range(6)]
        await asyncio.sleep(0.3)
        async with session.get(f"{base}/metrics") as r:
            mid = families(await r.text())
        model_running, model_waiting = srv.model.num_running, srv.model.num_waiting
        await asyncio.gather(*tasks)
        async with session.get(f"{base}/metrics") as r:
            end = families(await r.text())
        return mid, model_running, model_waiting, end

    mid, running, waiting, end = asyncio.run(_with_server(body, model_name="m"))
    assert value(mid, "vllm:num_requests_running", model_name="m", engine="0") == running == 6
    assert value(mid, "vllm:num_requests_waiting") == waiting == 0
    assert 0 < value(mid, "vllm:kv_cache_usage_perc") < 1
    assert value(end, "vllm:request_success", finished_reason="length") == 6
    assert value(end, "vllm:generation_tokens") == 6 * 300
    assert value(end, "vllm:prompt_tokens") == sum(100 + i for i in range(6))
    assert value(end, "vllm:num_requests_running") == 0
    assert value(end, "vllm:time_to_first_token_seconds") == 6  # histogram count
    assert end["vllm:time_to_first_token_seconds"].type == "histogram"
    assert end["vllm:request_success"].type == "counter"
    assert "llm_request_queue_depth" in end and "llm_time_to_first_token_seconds" in end


def test_queue_builds_beyond_max_num_seqs():
    profile = H100.model_copy(update={"max_num_seqs": 2})

    async def body(srv, session, base):
        async def one():
            async with session.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 400}) as r:
                await r.read()

        tasks = [asyncio.create_task(one()) for _ in range(5)]
        await asyncio.sleep(0.2)
        async with session.get(f"{base}/metrics") as r:
            fams = families(await r.text())
        await asyncio.gather(*tasks)
        return fams

    fams = asyncio.run(_with_server(body, profile=profile))
    assert value(fams, "vllm:num_requests_running") == 2
    assert value(fams, "vllm:num_requests_waiting") == 3


def test_legacy_metric_names():
    async def body(srv, session, base):
        async with session.get(f"{base}/metrics") as r:
            return families(await r.text())

    fams = asyncio.run(_with_server(body, legacy_metric_names=True))
    assert "vllm:gpu_cache_usage_perc" in fams and "vllm:kv_cache_usage_perc" not in fams
    assert "vllm:time_per_output_token_seconds" in fams


def test_streaming_chat_and_errors():
    async def body(srv, session, base):
        async with session.post(f"{base}/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}) as r:
            lines = [ln for ln in (await r.text()).splitlines() if ln.startswith("data:")]
        async with session.post(f"{base}/v1/completions", data=b"not json") as r:
            bad = r.status
        async with session.post(f"{base}/v1/completions", json={"prompt": "x " * 9000, "max_tokens": 5}) as r:
            too_long = r.status, await r.json()
        async with session.get(f"{base}/v1/models") as r:
            models = await r.json()
        return lines, bad, too_long, models

    lines, bad, too_long, models = asyncio.run(_with_server(body, model_name="m"))
    assert lines[-1] == "data: [DONE]"
    tokens = [json.loads(ln[5:])["choices"][0]["delta"].get("content") for ln in lines[:-1]]
    assert sum(1 for t in tokens if t) == 5
    assert bad == 400
    assert too_long[0] == 400 and "maximum context length" in too_long[1]["error"]["message"]
    assert models["data"][0]["id"] == "m"


def test_cold_start_refuses_connections_then_serves():
    port = free_port()
    with qscale_process("serve", "--port", str(port), "--cold-start", "2") as proc:
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        waited = wait_http(f"http://127.0.0.1:{port}/health", 20, proc)
        assert waited > 1.0  # ~1.5 s left of the 2-s load when we started polling
        assert http_get(f"http://127.0.0.1:{port}/health")[0] == 200


def test_sigterm_drains_in_flight_requests_then_exits_0():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with qscale_process("serve", "--port", str(port), "--drain-grace", "30") as proc:
        wait_http(f"{base}/health", 20, proc)
        results: list = []

        def client(i):
            import urllib.request
            req = urllib.request.Request(f"{base}/v1/completions", method="POST",
                                         data=json.dumps({"prompt": "x", "max_tokens": 250, "stream": True}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read().decode()
            results.append(body)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert http_get(f"{base}/v1/models")[0] == 200  # still up while draining
        status = None
        try:
            import urllib.request
            r = urllib.request.Request(f"{base}/v1/completions", method="POST", data=b'{"prompt":"x"}',
                                       headers={"Content-Type": "application/json"})
            urllib.request.urlopen(r, timeout=5)
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == 503
        for t in threads:
            t.join(30)
        assert proc.wait(timeout=30) == 0
    assert len(results) == 5
    for body in results:
        assert body.rstrip().endswith("data: [DONE]")
        assert body.count('"text":" tok') == 250


# --- input validation, streams, disconnects, read timeouts ----------------------------------


async def _raw(base: str, request: bytes, read_s: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server sends until it closes."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), read_s)
    finally:
        writer.close()


def _post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


ABSURD_MAX_TOKENS = ["1e400", "-1e400", "NaN", "Infinity", "-1", "0", "1.5", "1e20", '"10"', "true", "[5]",
                     "1" + "0" * 5000, "99999999999999999999999999"]


@pytest.mark.parametrize("stream", [False, True])
def test_absurd_max_tokens_get_a_one_line_400(stream):
    async def body(srv, session, base):
        out = []
        for raw in ABSURD_MAX_TOKENS:
            for path, rest in (("/v1/completions", '"prompt":"hi"'),
                               ("/v1/chat/completions", '"messages":[{"role":"user","content":"hi"}]')):
                payload = f'{{{rest},"max_tokens":{raw},"stream":{str(stream).lower()}}}'.encode()
                async with session.post(f"{base}{path}", data=payload,
                                        headers={"Content-Type": "application/json"}) as r:
                    out.append((raw[:20], path, r.status, r.content_type, await r.text()))
        return out

    for raw, path, status, ctype, text in asyncio.run(_with_server(body)):
        assert status == 400, (raw, path, status, text[:300])
        assert ctype == "application/json", (raw, path, text[:300])
        err = json.loads(text)["error"]
        assert err["code"] == 400 and err["type"] == "BadRequestError"
        assert "\n" not in err["message"] and "Traceback" not in text, err


def test_integral_floats_and_max_completion_tokens_are_accepted():
    async def body(srv, session, base):
        async with session.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 3.0}) as r:
            a = await r.json()
        async with session.post(f"{base}/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2}) as r:
            b = await r.json()
        return a, b

    a, b = asyncio.run(_with_server(body))
    assert a["usage"]["completion_tokens"] == 3 and b["usage"]["completion_tokens"] == 2


def _pending_rid(srv) -> int:
    return max(srv._pending)


def test_a_stream_rejected_after_headers_ends_with_an_error_event_not_a_second_status_line():
    profile = H100.model_copy(update={"max_num_seqs": 1})

    async def body(srv, session, base):
        hog = asyncio.create_task(session.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 300}))
        await asyncio.sleep(0.2)
        queued = asyncio.create_task(_raw(base, _post("/v1/completions", b'{"prompt":"x","max_tokens":5,"stream":true}')))
        await asyncio.sleep(0.2)  # its headers are out; it waits for the slot
        srv._on_rejected(srv._pending[_pending_rid(srv)].req, "the engine failed")
        raw_queued = await queued
        # And one rejected after some tokens went out.
        mid = asyncio.create_task(_raw(base, _post("/v1/completions", b'{"prompt":"x","max_tokens":400,"stream":true}')))
        (await hog).close()
        await asyncio.sleep(0.5)
        req = srv._pending[_pending_rid(srv)].req
        srv.model.abort(req)
        srv._on_rejected(req, "the engine failed")
        return raw_queued, await mid

    for raw in asyncio.run(_with_server(body, profile=profile)):
        text = raw.decode()
        assert text.count("HTTP/1.1") == 1, text[:500]
        assert text.startswith("HTTP/1.1 200") and "text/event-stream" in text
        events = [ln for ln in text.splitlines() if ln.startswith("data:")]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2][5:])["error"]
        assert "the engine failed" in error["message"]
        assert not any('"finish_reason":"length"' in e for e in events)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_frees_its_slot(stream):
    profile = H100.model_copy(update={"max_num_seqs": 1})

    async def body(srv, session, base):
        host, port = base.removeprefix("http://").split(":")
        payload = json.dumps({"prompt": "x", "max_tokens": 3000, "stream": stream}).encode()
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(_post("/v1/completions", payload))
        await writer.drain()
        await asyncio.sleep(0.3)
        running_before = srv.model.num_running
        writer.close()  # the client gives up
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        async with session.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 5}) as r:
            await r.read()
        return running_before, time.perf_counter() - t0, srv.metrics.finished_by_reason.get("abort", 0)

    running_before, next_took, aborts = asyncio.run(_with_server(body, profile=profile))
    assert running_before == 1
    assert aborts == 1
    assert next_took < 1.0  # the slot was free: 3000 tokens would have taken ~20 s


def test_a_queued_stream_whose_client_goes_away_leaves_the_queue():
    profile = H100.model_copy(update={"max_num_seqs": 1})

    async def body(srv, session, base):
        hog = asyncio.create_task(session.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 400}))
        await asyncio.sleep(0.2)
        host, port = base.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(_post("/v1/completions", b'{"prompt":"x","max_tokens":5,"stream":true}'))
        await writer.drain()
        await asyncio.sleep(0.3)
        waiting_before = srv.model.num_waiting
        writer.close()
        await asyncio.sleep(0.3)
        waiting_after = srv.model.num_waiting
        (await hog).close()
        return waiting_before, waiting_after

    assert asyncio.run(_with_server(body, profile=profile)) == (1, 0)


def test_half_sent_requests_are_dropped_after_the_read_timeout():
    async def body(srv, session, base):
        host, port = base.removeprefix("http://").split(":")
        conns = []
        for i in range(60):
            reader, writer = await asyncio.open_connection(host, int(port))
            if i % 3 == 0:
                writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")  # half a head
            elif i % 3 == 1:
                writer.write(_post("/v1/completions", b'{"prompt":"x","max_tokens":5}')[:-10])  # half a body
            conns.append((reader, writer))  # (and a third that sends nothing)
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(asyncio.wait_for(r.read(), 5.0) for r, _ in conns))
        took = time.perf_counter() - t0
        for _, w in conns:
            w.close()
        async with session.get(f"{base}/health") as r:
            healthy = r.status
        return replies, took, healthy

    replies, took, healthy = asyncio.run(_with_server(body, read_timeout_s=0.5))
    assert took < 3.0  # all 60 closed by the server, none held
    assert all(b"408" in r.split(b"\r\n", 1)[0] for r in replies[1::3]), replies[1]
    assert healthy == 200


# --- `qscale serve` flags -------------------------------------------------------------------

BAD_SERVE_FLAGS = [
    ["--max-num-seqs", "0"], ["--max-num-seqs", "-1"], ["--max-num-seqs", "nan"], ["--max-num-seqs", "1e3"],
    ["--max-num-batched-tokens", "0"], ["--max-model-len", "0"], ["--max-model-len", "10000000000000"],
    ["--max-model-len", "100000000"],  # more than the KV cache holds
    ["--cold-start", "nan"], ["--cold-start", "inf"], ["--cold-start", "-1"], ["--cold-start", "1e12"],
    ["--drain-grace", "nan"], ["--drain-grace", "inf"], ["--drain-grace", "-0.5"],
    ["--read-timeout", "0"], ["--read-timeout", "nan"], ["--read-timeout", "inf"],
    ["--port", "0"], ["--port", "70000"], ["--replicas", "0"], ["--replicas", "100000"],
    ["--engine", "vllm", "--replicas", "2"], ["--engine", "vllm", "--max-num-seqs", "0"],
    ["--profile", "no-such-profile"], ["--model-name", ""], ["--model-name", "  "],
    ["--fault-dir", "/no/such/folder"],
]


@pytest.fixture
def nothing_may_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("serving started: the flags should have been refused first")

    monkeypatch.setattr("server.emulator.serve_emulated", refuse)
    monkeypatch.setattr("server.launcher.launch_vllm", refuse)
    monkeypatch.setattr("server.procs.die_with_parent", refuse)


@pytest.mark.parametrize("flags", BAD_SERVE_FLAGS, ids=lambda f: " ".join(f))
def test_bad_serve_flags_get_one_line_and_exit_2(capsys, nothing_may_start, flags):
    from qscale.cli import main

    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qscale: error: ") and err.count("\n") == 1, err
