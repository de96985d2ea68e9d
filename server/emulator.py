"""An emulated vLLM server: the OpenAI API subset, vLLM's /metrics, cold start and drain.

Timing comes from `simulations.replica.ReplicaModel` (the simulator's own replica model)
running against the wall clock; tokens are placeholders, the timing is not.

* `POST /v1/completions`, `POST /v1/chat/completions` (streaming over SSE or not). The
  prompt's token count is its whitespace-separated word count (or `prompt` given as a list
  of token ids); the reply always generates `max_tokens` tokens (default 16).
* Bad input (not JSON, NaN, `max_tokens` that is not an integer in 1..max_model_len, too
  long a context) gets a 400 with vLLM's one-line error object `{"error": {...}}`, decided
  before any header is sent. A stream that fails after its headers ends with an SSE error
  event and `data: [DONE]`, never a second status line.
* A client that goes away (streaming or not) has its request aborted at once, freeing its
  batch slot, as vLLM does.
* Read timeout (`read_timeout_s`, default 30 s): a connection that has not sent a whole
  request head in that time is closed; a body not received in that time gets a 408.
* `GET /v1/models`, `GET /health` (200, empty body), `GET /metrics` (vLLM names).
* Cold start: the port is not bound until the "model" has loaded: connections are refused,
  as with real vLLM.
* SIGTERM: new requests get 503, in-flight ones finish within the grace period, exit 0;
  with our parent gone (`server.procs.parent_gone`), no drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field

from aiohttp import web

from server.clock import AsyncioClock
from server.faults import fault_mode, faulty_metrics
from server.metrics import VllmMetrics
from server.procs import parent_gone
from simulations.profile import PerformanceProfile
from simulations.replica import ReplicaHooks, ReplicaModel
from simulations.request import Request

STREAM_POLL_S = 0.02  # how often a stream checks for new tokens (and for its client)
DISCONNECT_POLL_S = 0.1  # how often a non-streamed request checks that its client is still there
SHUTDOWN_TIMEOUT_S = 1.0  # after the drain, how long the runner waits for handlers still running
LINGER_S = 1.0  # after answering a request whose body never came (408), how long to read its rest


@dataclass
class _Pending:
    req: Request
    first: asyncio.Future
    done: asyncio.Future
    tokens_sent: int = 0


@dataclass
class EmulatorConfig:
    profile: PerformanceProfile
    model_name: str = "emulated/llama-3-8b"
    cold_start_s: float = 0.0
    drain_grace_s: float = 30.0
    read_timeout_s: float = 30.0  # headers (from connect or the last response) and body, each
    legacy_metric_names: bool = False
    default_max_tokens: int = 16
    fault_dir: str | None = None  # fault runs: /metrics shows the fault named in fault_dir/<port>
    extra: dict = field(default_factory=dict)


class _Hooks(ReplicaHooks):
    def __init__(self, server: EmulatedServer) -> None:
        self.server = server

    def first_token(self, req: Request) -> None:
        self.server._on_first_token(req)

    def finished(self, req: Request) -> None:
        self.server._on_finished(req)

    def rejected(self, req: Request, why: str) -> None:
        self.server._on_rejected(req, why)


class EmulatedServer:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.model: ReplicaModel | None = None
        self.metrics: VllmMetrics | None = None
        self.draining = False
        self._ids = itertools.count()
        self._pending: dict[int, _Pending] = {}
        self._created = int(time.time())
        self.port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        clock = AsyncioClock()
        self.model = ReplicaModel("emulated", self.config.profile, clock, _Hooks(self))
        self.metrics = VllmMetrics(self.model, self.config.model_name, self.config.legacy_metric_names)
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/version", self.version)
        return app

    def make_runner(self) -> web.AppRunner:
        """An AppRunner for `build_app()` with the read timeout: a connection that has not sent a
        whole request head within `read_timeout_s` (of connecting, or of its last response) is
        closed (aiohttp's keep-alive timer also covers a half-sent head); the body has its own
        `read_timeout_s` in the handler (408), then the connection closes within `LINGER_S`."""
        return web.AppRunner(self.build_app(), access_log=None, handle_signals=False,
                             keepalive_timeout=self.config.read_timeout_s, lingering_time=LINGER_S,
                             shutdown_timeout=SHUTDOWN_TIMEOUT_S)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Stop taking requests; wait for in-flight ones up to the grace period."""
        self.draining = True
        deadline = time.monotonic() + self.config.drain_grace_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # --- model hooks ----------------------------------------------------------------------

    def _on_first_token(self, req: Request) -> None:
        p = self._pending.get(req.rid)
        assert self.metrics is not None
        ttft = req.ttft_s
        assert ttft is not None
        self.metrics.ttft.observe(ttft)
        self.metrics.app_ttft.observe(ttft)
        if req.queue_s is not None:
            self.metrics.queue.observe(req.queue_s)
        if p is not None and not p.first.done():
            p.first.set_result(None)

    def _on_finished(self, req: Request) -> None:
        assert self.metrics is not None
        assert req.e2e_s is not None
        self.metrics.e2e.observe(req.e2e_s)
        self.metrics.prompt_len.observe(req.prompt)
        self.metrics.output_len.observe(req.generated)
        if req.itl_s is not None:  # more than one output token
            self.metrics.itl.observe(req.itl_s)
        self.metrics.finished_by_reason["length"] = self.metrics.finished_by_reason.get("length", 0) + 1
        p = self._pending.get(req.rid)
        if p is not None:
            if not p.first.done():
                p.first.set_result(None)
            if not p.done.done():
                p.done.set_result(None)

    def _on_rejected(self, req: Request, why: str) -> None:
        p = self._pending.get(req.rid)
        if p is not None and not p.done.done():
            p.done.set_exception(ValueError(why))
            if not p.first.done():
                p.first.set_exception(ValueError(why))
            p.first.exception()  # mark retrieved

    # --- endpoints ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.33.0-emulated"})

    async def models(self, request: web.Request) -> web.Response:
        name = self.config.model_name
        return web.json_response({"object": "list", "data": [{
            "id": name, "object": "model", "created": self._created, "owned_by": "vllm", "root": name,
            "parent": None, "max_model_len": self.config.profile.max_model_len,
        }]})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        assert self.metrics is not None
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        body = self.metrics.render(openmetrics)
        ctype = ("application/openmetrics-text; version=1.0.0; charset=utf-8" if openmetrics
                 else "text/plain; version=0.0.4; charset=utf-8")
        mode = fault_mode(self.config.fault_dir, self.port)
        if mode is not None:
            return await faulty_metrics(request, mode, body, ctype)
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if self.draining:
            return _error(503, "server is shutting down")
        try:
            body = await self._read_json(request)
            prompt_tokens, max_tokens, stream = self._validate(body, chat)
        except _HttpError as exc:
            resp = _error(exc.status, str(exc))
            if exc.status == 408:
                resp.force_close()
            return resp
        assert self.model is not None
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        req = Request(rid, self.model.clock.now, prompt_tokens, max_tokens)
        pending = _Pending(req, loop.create_future(), loop.create_future())
        self._pending[rid] = pending
        try:
            self.model.submit(req)
            if pending.done.done() and pending.done.exception() is not None:  # refused at once
                return _error(400, str(pending.done.exception()))
            ident = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
            if stream:
                return await self._stream(request, pending, chat, ident, prompt_tokens)
            return await self._complete(request, pending, chat, ident, prompt_tokens)
        except asyncio.CancelledError:  # the client went away (handler cancellation): abort, as vLLM does
            self._abort(req)
            raise
        finally:
            self._pending.pop(rid, None)

    async def _read_json(self, request: web.Request) -> object:
        """The body as JSON; 408 if it does not arrive within the read timeout."""
        try:
            raw = await asyncio.wait_for(request.read(), self.config.read_timeout_s)
        except TimeoutError:
            raise _HttpError(408, "request body not received in time") from None
        except web.HTTPRequestEntityTooLarge:
            raise _HttpError(413, "request body too large") from None
        try:
            return json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, NaN, ints over 4300 digits
            raise _HttpError(400, "request body is not valid JSON") from None

    def _validate(self, body: object, chat: bool) -> tuple[int, int, bool]:
        """(prompt tokens, max tokens, stream) of a request body, or a 400."""
        if not isinstance(body, dict):
            raise _HttpError(400, "request body must be a JSON object")
        try:
            prompt_tokens = _count_prompt(body, chat)
            max_tokens = _max_tokens(body, self.config.default_max_tokens, self.config.profile.max_model_len)
        except ValueError as exc:
            raise _HttpError(400, str(exc)) from None
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise _HttpError(400, "stream must be a boolean")
        limit = self.config.profile.max_model_len
        if prompt_tokens + max_tokens > limit:
            raise _HttpError(400, f"This model's maximum context length is {limit} tokens. However, you "
                                  f"requested {prompt_tokens + max_tokens} tokens.")
        return prompt_tokens, max_tokens, bool(stream)

    def _abort(self, req: Request) -> None:
        assert self.model is not None and self.metrics is not None
        if self.model.abort(req):
            self.metrics.finished_by_reason["abort"] = self.metrics.finished_by_reason.get("abort", 0) + 1

    async def _complete(self, request: web.Request, p: _Pending, chat: bool, ident: str,
                        prompt_tokens: int) -> web.StreamResponse:
        while not p.done.done():
            if not await _wait_or_gone(request, p.done, DISCONNECT_POLL_S):
                self._abort(p.req)
                return web.Response(status=499)  # nobody reads it: the connection is gone
        if p.done.exception() is not None:
            return _error(400, str(p.done.exception()))
        return web.json_response(_full_response(chat, ident, self.config.model_name, p.req, prompt_tokens))

    async def _stream(self, request: web.Request, p: _Pending, chat: bool, ident: str,
                      prompt_tokens: int) -> web.StreamResponse:
        """SSE. Everything was validated before the headers; a later failure ends the stream with
        an error event and [DONE] (as vLLM does), never a second status line."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
            await self._stream_body(request, resp, p, chat, ident, prompt_tokens)
        except ConnectionResetError:  # the client went away mid-stream
            self._abort(p.req)
        return resp

    async def _stream_body(self, request: web.Request, resp: web.StreamResponse, p: _Pending, chat: bool,
                           ident: str, prompt_tokens: int) -> None:
        name, req, model = self.config.model_name, p.req, self.model
        assert model is not None
        while True:
            if not await _wait_or_gone(request, p.done, STREAM_POLL_S):
                self._abort(req)
                return
            if p.done.done() and p.done.exception() is not None:
                await resp.write(_sse({"error": _error_info(500, str(p.done.exception()))}))
                break
            produced = req.output if p.done.done() else model.generated_now(req)
            while p.tokens_sent < produced:
                p.tokens_sent += 1
                await resp.write(_sse(_chunk(chat, ident, name, p.tokens_sent, None)))
            if p.done.done():
                await resp.write(_sse(_chunk(chat, ident, name, None, "length", req, prompt_tokens)))
                break
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _wait_or_gone(request: web.Request, fut: asyncio.Future, poll_s: float) -> bool:
    """Wait up to `poll_s` for `fut` (or until it is done); False if the client has gone."""
    if not fut.done():
        await asyncio.wait([fut], timeout=poll_s)
    return not _client_gone(request)


def _max_tokens(body: dict, default: int, limit: int) -> int:
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer")
        if value < 1:
            raise ValueError(f"{key} must be at least 1")
        if value > limit:
            raise ValueError(f"{key} must be at most max_model_len ({limit})")
        return value
    return default


def _count_prompt(body: dict, chat: bool) -> int:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        words = 0
        for m in messages:
            if not isinstance(m, dict):
                raise ValueError("each message must be a JSON object")
            content = m.get("content") or ""
            if isinstance(content, list):
                content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            words += len(str(content).split()) + 4  # role and template tokens
        return max(1, words)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list):
        prompt = " ".join(map(str, prompt))
    if not isinstance(prompt, str):
        raise ValueError("prompt must be a string or a list of token ids")
    return max(1, len(prompt.split()))


ERROR_TYPES = {400: "BadRequestError", 408: "RequestTimeoutError", 413: "RequestEntityTooLargeError",
               500: "InternalServerError", 503: "ServiceUnavailableError"}


def _error_info(status: int, message: str) -> dict:
    """vLLM's (and OpenAI's) error object; the message is one line."""
    return {"message": " ".join(message.split()), "type": ERROR_TYPES.get(status, "Error"), "param": None,
            "code": status}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": _error_info(status, message)}, status=status)


def _sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def _chunk(chat: bool, ident: str, model: str, index: int | None, finish: str | None,
           req: Request | None = None, prompt_tokens: int = 0) -> dict:
    text = "" if index is None else f" tok{index}"
    choice = ({"index": 0, "delta": {"content": text} if index is not None else {}, "finish_reason": finish}
              if chat else {"index": 0, "text": text, "finish_reason": finish})
    out = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
           "created": int(time.time()), "model": model, "choices": [choice]}
    if req is not None:
        out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": req.output,
                        "total_tokens": prompt_tokens + req.output}
    return out


def _full_response(chat: bool, ident: str, model: str, req: Request, prompt_tokens: int) -> dict:
    text = "".join(f" tok{i}" for i in range(1, req.output + 1))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
              if chat else {"index": 0, "text": text, "finish_reason": "length", "logprobs": None})
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": req.output,
                      "total_tokens": prompt_tokens + req.output}}


async def serve_emulated(config: EmulatorConfig, host: str, ports: list[int],
                         ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> int:
    """Run one emulated replica per port in this event loop until `stop` (or SIGTERM/SIGINT).

    Stopping drains (up to the grace period), unless our parent is gone: then no drain.
    """
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # Cold start: the "model" loads before the port is bound, so connections are refused.
    if config.cold_start_s > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.cold_start_s)
    servers = [EmulatedServer(config) for _ in ports]
    runners = []
    try:
        if not stop.is_set():
            for srv, port in zip(servers, ports, strict=True):
                srv.port = port
                runners.append(runner := srv.make_runner())
                await runner.setup()
                await web.TCPSite(runner, host, port, reuse_address=True).start()
            if ready is not None:
                ready.set()
            await stop.wait()
            if not parent_gone():
                await asyncio.gather(*(s.drain() for s in servers))
    finally:
        for runner in runners:
            await runner.cleanup()
    return 0
