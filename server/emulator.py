"""An emulated vLLM server: the OpenAI API subset, vLLM's /metrics, cold start and drain.

Timing comes from `simulations.replica.ReplicaModel` (the simulator's own replica model)
running against the wall clock; tokens are placeholders, the timing is not.

* `POST /v1/completions`, `POST /v1/chat/completions` (streaming over SSE or not). The
  prompt's token count is its whitespace-separated word count (or `prompt` given as a list
  of token ids); the reply always generates `max_tokens` tokens (default 16).
* `GET /v1/models`, `GET /health` (200, empty body), `GET /metrics` (vLLM names).
* Cold start: the port is not bound until the "model" has loaded: connections are refused,
  as with real vLLM.
* SIGTERM: new requests get 503, in-flight ones finish within the grace period, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

from server.clock import AsyncioClock
from server.metrics import VllmMetrics
from simulations.profile import PerformanceProfile
from simulations.replica import ReplicaHooks, ReplicaModel
from simulations.request import Request

STREAM_POLL_S = 0.02  # how often a stream checks for new tokens


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
    legacy_metric_names: bool = False
    default_max_tokens: int = 16
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
        ttft = req.first_token - req.arrival  # type: ignore[operator]
        self.metrics.ttft.observe(ttft)
        self.metrics.app_ttft.observe(ttft)
        if req.scheduled is not None:
            self.metrics.queue.observe(req.scheduled - req.arrival)
        if p is not None and not p.first.done():
            p.first.set_result(None)

    def _on_finished(self, req: Request) -> None:
        assert self.metrics is not None
        self.metrics.e2e.observe(req.finished - req.arrival)  # type: ignore[operator]
        if req.output > 1:
            self.metrics.itl.observe((req.finished - req.first_token) / (req.output - 1))  # type: ignore[operator]
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
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if self.draining:
            return _error(503, "server is shutting down")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        try:
            prompt_tokens = _count_prompt(body, chat)
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens")
                             or self.config.default_max_tokens)
        except (TypeError, ValueError) as exc:
            return _error(400, str(exc))
        if max_tokens < 1:
            return _error(400, "max_tokens must be at least 1")
        if prompt_tokens + max_tokens > self.config.profile.max_model_len:
            return _error(400, f"This model's maximum context length is {self.config.profile.max_model_len} "
                               f"tokens. However, you requested {prompt_tokens + max_tokens} tokens.")
        assert self.model is not None
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        req = Request(rid, self.model.clock.now, prompt_tokens, max_tokens)
        pending = _Pending(req, loop.create_future(), loop.create_future())
        self._pending[rid] = pending
        self.model.submit(req)
        stream = bool(body.get("stream"))
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
        try:
            if stream:
                return await self._stream(request, pending, chat, ident, prompt_tokens)
            await pending.done
            return web.json_response(_full_response(chat, ident, self.config.model_name, req, prompt_tokens))
        except ValueError as exc:
            return _error(400, str(exc))
        except (asyncio.CancelledError, ConnectionResetError):
            # The client went away: abort it, as vLLM does.
            if self.model.abort(req):
                self.metrics.finished_by_reason["abort"] = self.metrics.finished_by_reason.get("abort", 0) + 1  # type: ignore[union-attr]
            raise
        finally:
            self._pending.pop(rid, None)

    async def _stream(self, request: web.Request, p: _Pending, chat: bool, ident: str,
                      prompt_tokens: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await p.first
        name = self.config.model_name
        req = p.req
        while True:
            produced = req.output if p.done.done() else self._generated(req)
            while p.tokens_sent < produced:
                p.tokens_sent += 1
                await resp.write(_sse(_chunk(chat, ident, name, p.tokens_sent, None)))
            if p.done.done():
                break
            await asyncio.wait([p.done], timeout=STREAM_POLL_S)
        await resp.write(_sse(_chunk(chat, ident, name, None, "length", req, prompt_tokens)))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _generated(self, req: Request) -> int:
        """Tokens the model has produced for `req` so far (decode progress included)."""
        m = self.model
        assert m is not None
        if req.rid in m.prefilling or req.rid not in m.running:
            return req.generated
        return min(req.output, req.join_generated + (m.steps + m._segment_progress() - req.join_step))


def _count_prompt(body: dict, chat: bool) -> int:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        words = 0
        for m in messages:
            content = m.get("content", "") if isinstance(m, dict) else ""
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


def _error(status: int, message: str) -> web.Response:
    kind = {400: "BadRequestError", 503: "ServiceUnavailableError"}.get(status, "Error")
    return web.json_response({"object": "error", "message": message, "type": kind, "param": None,
                              "code": status}, status=status)


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
    """Run one emulated replica per port in this event loop until `stop` (or SIGTERM/SIGINT)."""
    import signal

    servers = [EmulatedServer(config) for _ in ports]
    runners = []
    # Cold start: the "model" loads before the port is bound, so connections are refused.
    if config.cold_start_s > 0:
        await asyncio.sleep(config.cold_start_s)
    for srv, port in zip(servers, ports, strict=True):
        runner = web.AppRunner(srv.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        runners.append(runner)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    await asyncio.gather(*(s.drain() for s in servers))
    for runner in runners:
        await runner.cleanup()
    return 0
