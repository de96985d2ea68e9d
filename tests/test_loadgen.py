"""The load generator counts what a user counts: ok only for a complete answer; cut streams,
timeouts, refusals and HTTP errors apart, in the summary and per request in the CSV. And
`qscale load` refuses bad flags with one line before it sends anything."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from qscale.cli import main
from server.loadgen import replay
from simulations.traffic.loaders import TraceChunk
from tests.servers import free_port


def _sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _token(i: int) -> bytes:
    return _sse({"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]})


FINAL = _sse({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})


async def _stream(request: web.Request, *parts: bytes, eof: bool = True) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for part in parts:
        await resp.write(part)
    if eof:
        await resp.write_eof()
    return resp


async def ok_stream(request: web.Request) -> web.StreamResponse:
    return await _stream(request, _token(1), _token(2), FINAL, b"data: [DONE]\n\n")


async def cut_stream(request: web.Request) -> web.StreamResponse:
    resp = await _stream(request, _token(1), _token(2), _token(3), eof=False)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()  # the server dies mid-stream
    return resp


async def ended_without_done(request: web.Request) -> web.StreamResponse:
    return await _stream(request, _token(1), _token(2))  # a clean end, but no finish, no [DONE]


async def done_without_finish(request: web.Request) -> web.StreamResponse:
    return await _stream(request, _token(1), b"data: [DONE]\n\n")


async def error_event(request: web.Request) -> web.StreamResponse:
    err = {"error": {"message": "engine died", "type": "InternalServerError", "param": None, "code": 500}}
    return await _stream(request, _token(1), _sse(err), b"data: [DONE]\n\n")


async def hang_mid_stream(request: web.Request) -> web.StreamResponse:
    await _stream(request, _token(1), eof=False)
    await asyncio.sleep(30)
    raise AssertionError("not reached: the client times out")


async def hang_before_headers(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    raise AssertionError("not reached: the client times out")


async def status_500(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "boom"}}, status=500)


async def status_429(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "slow down"}}, status=429)


async def ok_json(request: web.Request) -> web.Response:
    return web.json_response({"choices": [{"index": 0, "text": " a b", "finish_reason": "length"}],
                              "usage": {"completion_tokens": 2}})


async def cut_json(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "500"})
    await resp.prepare(request)
    await resp.write(b'{"choices": [{"index": 0, "te')
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return resp


async def no_choices(request: web.Request) -> web.Response:
    return web.json_response({"id": "x", "choices": []})


ROUTES = {"ok-stream": ok_stream, "cut-stream": cut_stream, "ended-without-done": ended_without_done,
          "done-without-finish": done_without_finish, "error-event": error_event,
          "hang-mid-stream": hang_mid_stream, "hang-before-headers": hang_before_headers, "500": status_500,
          "429": status_429, "ok-json": ok_json, "cut-json": cut_json, "no-choices": no_choices}


async def _replay_against(paths: list[str], out: Path, stream: bool = True, timeout_s: float = 0.7):
    app = web.Application()
    for name, handler in ROUTES.items():
        app.router.add_post(f"/{name}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    urls = [f"http://127.0.0.1:{port}/{p}" if p != "refused" else f"http://127.0.0.1:{free_port()}/x"
            for p in paths]
    n = len(urls)
    chunk = TraceChunk(np.linspace(0, 0.1, n), np.full(n, 5, np.int32), np.full(n, 3, np.int32))
    try:
        return await replay([chunk], urls, out, timeout_s=timeout_s, stream=stream)
    finally:
        await runner.cleanup()


def _rows(path: Path) -> dict[int, dict]:
    with path.open() as f:
        return {int(r["rid"]): r for r in csv.DictReader(f)}


STREAM_CASES = {"ok-stream": "ok", "cut-stream": "cut", "ended-without-done": "cut", "done-without-finish": "cut",
                "error-event": "error:stream", "hang-mid-stream": "timeout", "hang-before-headers": "timeout",
                "500": "error:500", "429": "error:429", "refused": "refused"}


def test_streaming_outcomes_count_only_complete_answers_as_ok(tmp_path):
    out = tmp_path / "load.csv"
    summary = asyncio.run(_replay_against(list(STREAM_CASES), out))
    rows = _rows(out)
    got = {path: rows[i]["outcome"] for i, path in enumerate(STREAM_CASES)}
    assert got == STREAM_CASES
    assert summary.sent == len(STREAM_CASES)
    assert (summary.ok, summary.cut, summary.timeouts, summary.refused) == (1, 3, 2, 1)
    assert (summary.status_429, summary.status_503, summary.errors) == (1, 0, 2)  # 500 and the error event
    assert summary.outcomes["cut"] == 3 and summary.outcomes["error:500"] == 1
    assert summary.e2e_p50_s is not None and rows[0]["e2e_s"] and not rows[1]["e2e_s"]  # e2e: complete only
    assert rows[1]["tokens_received"] == "3" and rows[1]["status"] == "200"  # what a cut stream delivered


def test_non_streamed_outcomes(tmp_path):
    out = tmp_path / "load.csv"
    cases = {"ok-json": "ok", "cut-json": "cut", "no-choices": "cut", "500": "error:500",
             "hang-before-headers": "timeout"}
    summary = asyncio.run(_replay_against(list(cases), out, stream=False))
    rows = _rows(out)
    assert {path: rows[i]["outcome"] for i, path in enumerate(cases)} == cases
    assert (summary.sent, summary.ok, summary.cut, summary.timeouts, summary.errors) == (5, 1, 2, 1, 1)
    assert rows[0]["tokens_received"] == "2"


def test_skipped_arrivals_are_rows_too(tmp_path):
    async def run():
        app = web.Application()
        app.router.add_post("/hang", hang_before_headers)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        chunk = TraceChunk(np.zeros(4), np.full(4, 5, np.int32), np.full(4, 3, np.int32))
        try:
            return await replay([chunk], f"http://127.0.0.1:{port}/hang", tmp_path / "l.csv", timeout_s=0.3,
                                max_in_flight=1)
        finally:
            await runner.cleanup()

    summary = asyncio.run(run())
    assert (summary.sent, summary.skipped, summary.timeouts) == (1, 3, 1)
    assert [r["outcome"] for r in _rows(tmp_path / "l.csv").values()] == ["timeout", "skipped", "skipped", "skipped"]


BAD_LOAD_FLAGS = [
    ["--duration", "nan"], ["--duration", "inf"], ["--duration", "-1"], ["--duration", "0"],
    ["--rate-scale", "nan"], ["--rate-scale", "inf"], ["--rate-scale", "0"], ["--rate-scale", "-2"],
    ["--rate-scale", "1e9"], ["--start", "nan"], ["--start", "-1"], ["--start", "inf"],
    ["--timeout", "nan"], ["--timeout", "inf"], ["--timeout", "0"], ["--timeout", "-1"],
    ["--max-requests", "0"], ["--max-requests", "-1"], ["--max-in-flight", "0"],
    ["--max-prompt-tokens", "0"], ["--max-prompt-tokens", "-5"], ["--max-output-tokens", "0"],
    ["--max-output-tokens", "1e3"], ["--max-output-tokens", "100000000000"], ["--seed", "-1"],
    ["--url", "ftp://x"], ["--url", "http://"], ["--trace", "synthetic:nope"],
    ["--url", "http://127.0.0.1:99999"], ["--url", "http://127.0.0.1:0"], ["--out", "/proc/x.csv"],
]


@pytest.fixture
def nothing_may_start(monkeypatch):
    async def refuse(*args, **kwargs):
        raise AssertionError("replay started: the flags should have been refused first")

    monkeypatch.setattr("server.loadgen.replay", refuse)


def _load(tmp_path: Path, *extra: str) -> list[str]:
    base = {"--trace": "synthetic:poisson?rate=1&duration=10", "--url": "http://127.0.0.1:9", "--out":
            str(tmp_path / "o.csv")}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        base[flag] = value
    return ["load", *[x for kv in base.items() for x in kv]]


@pytest.mark.parametrize("flags", BAD_LOAD_FLAGS, ids=lambda f: " ".join(f))
def test_bad_load_flags_get_one_line_and_exit_2(tmp_path, capsys, nothing_may_start, flags):
    assert main(_load(tmp_path, *flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith("qscale: error: ") and err.count("\n") == 1, err


def test_load_out_must_be_a_writable_file(tmp_path, capsys, nothing_may_start):
    (tmp_path / "a-file").write_text("")
    for out in (tmp_path, tmp_path / "a-file" / "o.csv"):
        assert main(_load(tmp_path, "--out", str(out))) == 2
        err = capsys.readouterr().err
        assert err.startswith("qscale: error: --out") and err.count("\n") == 1, err
