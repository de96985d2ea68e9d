"""The replica model: one vLLM V1 engine's scheduler and timing.

This is the single replica model of qscale: the simulator runs it against a
simulated clock and the emulated server runs it against the wall clock. It
needs only a clock with `now`, `at(time, fn, *args) -> handle` and `cancel(handle)`.

Scheduler behaviour (vLLM V1, FCFS):

* every step, each running request in decode gets one token; the step's token
  budget (`max_num_batched_tokens`) is spent on decodes first, then on partial
  prefills of running requests, then on admitting waiting requests, while
  fewer than `max_num_seqs` run (chunked prefill: a long prompt spans steps);
* KV cache in tokens (`num_gpu_blocks x block_size`): a request is admitted
  only if its next chunk fits; when decodes would not fit, the most recently
  admitted running request is preempted and recomputed later (V1 preemption by
  recompute, back to the front of the queue);
* optional prefix caching: a request whose leading prefix blocks (trace hash
  ids) are cached skips computing those tokens.

Speed: while the batch is pure decode and nothing can be admitted, every step
has the same shape, so the model jumps straight to the next completion (or KV
exhaustion) in closed form (`PerformanceProfile.decode_steps_time`). An
arrival that could be admitted cuts the run short at the next step boundary.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from typing import Any, Protocol

from policies.figures import ReplicaFigures
from simulations.profile import PerformanceProfile, prefill_attention
from simulations.request import Request


class Clock(Protocol):
    @property
    def now(self) -> float: ...

    def at(self, time: float, fn: Any, *args: Any) -> Any: ...

    def cancel(self, handle: Any) -> None: ...


class ReplicaHooks:
    """Callbacks from the model; the default does nothing."""

    def first_token(self, req: Request) -> None: ...
    def finished(self, req: Request) -> None: ...
    def rejected(self, req: Request, why: str) -> None: ...
    def idle(self, replica: ReplicaModel) -> None: ...


class _Step:
    """The step being planned: its token budget, free KV, and prefill chunks so far."""

    __slots__ = ("attention", "budget", "chunks", "free", "prefill_tokens")

    def __init__(self, budget: int, free: int) -> None:
        self.budget = budget
        self.free = free
        self.chunks: list[tuple[Request, int]] = []
        self.prefill_tokens = 0
        self.attention = 0.0  # attention pairs of its prefill chunks (profile.prefill_attention)

    def add(self, req: Request, tokens: int) -> None:
        self.chunks.append((req, tokens))
        self.budget -= tokens
        self.free -= tokens
        self.prefill_tokens += tokens
        self.attention += prefill_attention(req.computed, tokens)


class ReplicaModel:
    __slots__ = (
        "_decode_heap", "_event", "_prefix_cache", "_prefix_cap", "_segment", "analytic", "clock",
        "ctx_dec", "generation_tokens", "hooks", "kv_cap", "kv_used", "n_dec", "name", "p",
        "preemptions", "prefilling", "prefix_block_tokens", "prefix_caching", "prefix_hits",
        "prefix_queries", "prompt_tokens", "queue_count", "queue_sum", "requests_finished", "running", "steps",
        "ttft_count", "ttft_sum", "waiting", "_aborted", "_arriving", "__weakref__",
    )

    def __init__(
        self,
        name: str,
        profile: PerformanceProfile,
        clock: Clock,
        hooks: ReplicaHooks | None = None,
        prefix_caching: bool = True,
        prefix_block_tokens: int = 512,
        analytic: bool = True,
    ) -> None:
        """`analytic=False` steps every decode iteration (the reference for benchmarks)."""
        self.name = name
        self.p = profile
        self.clock = clock
        self.hooks = hooks or ReplicaHooks()
        self.prefix_caching = prefix_caching
        self.analytic = analytic
        self.prefix_block_tokens = prefix_block_tokens
        self.kv_cap = profile.kv_capacity_tokens
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}  # admission order
        self.prefilling: dict[int, Request] = {}  # running requests still in prefill
        self._decode_heap: list[tuple[int, int, int, Request]] = []  # (finish step, rid, epoch, req)
        self.steps = 0
        self.n_dec = 0  # requests in decode
        self.ctx_dec = 0.0  # context tokens over decoding requests
        self.kv_used = 0  # tokens held in the KV cache
        self._event: Any = None
        self._segment: tuple[float, int, int, float] | None = None  # start, steps, seqs, ctx0
        self._aborted: set[int] = set()
        self._arriving: dict[int, Any] = {}  # rid -> clock handle, still in the api server
        self._prefix_cache: OrderedDict[int, None] = OrderedDict()
        self._prefix_cap = max(1, self.kv_cap // prefix_block_tokens)
        # Cumulative counters, as vLLM's /metrics exposes them.
        self.requests_finished = 0
        self.generation_tokens = 0
        self.prompt_tokens = 0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.queue_sum = 0.0  # time from arrival to first scheduled, counted at the first token
        self.queue_count = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0

    # --- what /metrics shows ----------------------------------------------------------

    def _segment_progress(self) -> int:
        if self._segment is None:
            return 0
        start, steps, seqs, ctx0 = self._segment
        return min(steps, self.p.decode_steps_done(self.clock.now - start, seqs, ctx0))

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def kv_usage(self) -> float:
        return min(1.0, (self.kv_used + self.n_dec * self._segment_progress()) / self.kv_cap)

    def generation_tokens_now(self) -> int:
        return self.generation_tokens + self.n_dec * self._segment_progress()

    def figures(self) -> ReplicaFigures:
        """What this replica's /metrics shows now."""
        return ReplicaFigures(
            waiting=self.num_waiting, running=self.num_running, kv_cache_usage=self.kv_usage(),
            requests_finished=self.requests_finished, generation_tokens=self.generation_tokens_now(),
            prompt_tokens=self.prompt_tokens, preemptions=self.preemptions, ttft_sum=self.ttft_sum,
            ttft_count=self.ttft_count, prefix_queries=self.prefix_queries, prefix_hits=self.prefix_hits,
            queue_sum=self.queue_sum, queue_count=self.queue_count,
        )

    @property
    def outstanding(self) -> int:
        return len(self._arriving) + len(self.waiting) + len(self.running)

    # --- arrivals ---------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        if not self.p.fits(req.prompt):
            self._reject(req, "prompt longer than max_model_len")
            return
        req.replica = self
        delay = self.p.frontend_s
        if delay > 0:
            # The api server's own time (HTTP, tokenizing) before the engine core queues it.
            self._arriving[req.rid] = self.clock.at(self.clock.now + delay, self._from_frontend, req)
            return
        self._enqueue(req)

    def _from_frontend(self, req: Request) -> None:
        del self._arriving[req.rid]
        self._enqueue(req)

    def _enqueue(self, req: Request) -> None:
        """The request reaches the scheduler's waiting queue."""
        req.queued = self.clock.now
        self.waiting.append(req)
        if self._event is None:
            self._plan()
        elif self._segment is not None and len(self.running) < self.p.max_num_seqs:
            self._cut_segment()

    def _reject(self, req: Request, why: str) -> None:
        req.rejected = True
        self.hooks.rejected(req, why)

    def drop_expired(self, now: float, timeout_s: float) -> list[Request]:
        """Remove queued requests whose client gave up (no first token within `timeout_s`)."""
        expired = [
            r for r in self.waiting if r.first_token is None and now - r.arrival > timeout_s
        ]
        if expired:
            gone = {r.rid for r in expired}
            self.waiting = deque(r for r in self.waiting if r.rid not in gone)
            self.requests_finished += len(expired)  # vLLM counts aborts as finished (reason abort)
            for r in expired:
                r.dropped = True
        return expired

    def abort(self, req: Request) -> bool:
        """A client went away: vLLM aborts its request. True if it was still here.

        A queued request leaves at once; a running one leaves at the next step
        boundary (the batch of a step in flight cannot change).
        """
        if req.finished is not None or req.dropped:
            return False
        if req.rid in self._arriving:
            # Still in the api server: it never reaches the scheduler.
            self.clock.cancel(self._arriving.pop(req.rid))
        elif req in self.waiting:
            self.waiting.remove(req)
        elif req.rid in self.running:
            self._aborted.add(req.rid)
            if self._segment is not None:
                self._cut_segment()
            elif self._event is None:
                self._apply_aborts()
        else:
            return False
        req.dropped = True
        self.requests_finished += 1
        return True

    def _apply_aborts(self) -> None:
        for rid in self._aborted:
            req = self.running.pop(rid, None)
            if req is None:
                continue
            if rid in self.prefilling:
                del self.prefilling[rid]
                self.kv_used -= req.computed
            else:
                gen = self._current_generated(req)
                self.n_dec -= 1
                self.ctx_dec -= req.prompt + gen
                self.kv_used -= req.prompt + gen
                req.epoch += 1
        self._aborted.clear()

    # --- the scheduler ----------------------------------------------------------------

    def _cut_segment(self) -> None:
        """End the running decode segment at the next step boundary."""
        assert self._segment is not None
        start, steps, seqs, ctx0 = self._segment
        done = self.p.decode_steps_done(self.clock.now - start, seqs, ctx0)
        cut = min(steps, done + 1)
        if cut < steps:
            self.clock.cancel(self._event)
            self._segment = (start, cut, seqs, ctx0)
            end = start + self.p.decode_steps_time(cut, seqs, ctx0)
            self._event = self.clock.at(end, self._segment_end, cut)

    def _current_generated(self, req: Request) -> int:
        """Tokens generated by a decoding request up to the last step boundary."""
        return req.join_generated + (self.steps - req.join_step)

    def generated_now(self, req: Request) -> int:
        """Tokens generated for `req` so far, progress within a running decode segment included."""
        if req.rid in self.prefilling or req.rid not in self.running:
            return req.generated
        return min(req.output, self._current_generated(req) + self._segment_progress())

    def _preempt_last(self) -> None:
        rid, req = self.running.popitem()
        if rid in self.prefilling:
            del self.prefilling[rid]
            self.kv_used -= req.computed
        else:
            gen = self._current_generated(req)
            req.generated = gen
            self.n_dec -= 1
            self.ctx_dec -= req.prompt + gen
            self.kv_used -= req.prompt + gen
            req.epoch += 1  # its completion entry in the heap is now stale
        req.computed = 0
        req.prefill_left = req.prompt + req.generated  # recompute prompt and generated tokens
        self.waiting.appendleft(req)
        self.preemptions += 1

    def _prefix_lookup(self, req: Request) -> None:
        """On first admission: skip the leading blocks already in the prefix cache."""
        self.prefix_queries += req.prompt
        if not (self.prefix_caching and req.hashes):
            return
        hits = 0
        for h in req.hashes:
            if h not in self._prefix_cache:
                break
            self._prefix_cache.move_to_end(h)
            hits += 1
        cached = min(hits * self.prefix_block_tokens, req.prompt - 1)
        if cached > 0:
            req.cached_tokens = cached
            req.computed = cached
            req.prefill_left = req.prompt - cached
            self.kv_used += cached
            self.prefix_hits += cached

    def _prefix_insert(self, req: Request) -> None:
        if not (self.prefix_caching and req.hashes):
            return
        cache = self._prefix_cache
        for h in req.hashes:
            cache[h] = None
            cache.move_to_end(h)
        while len(cache) > self._prefix_cap:
            cache.popitem(last=False)

    def _plan(self) -> None:
        """Choose the next step (or decode segment) and schedule its end: running requests
        first (decodes, then unfinished prefills), then waiting ones, as in one
        `Scheduler.schedule` call."""
        self._event = None
        self._segment = None
        if self.n_dec and self.kv_used + self.n_dec > self.kv_cap:
            self._fit_decodes()
        if self.prefilling or self.waiting:
            n_dec = self.n_dec
            step = _Step(self.p.max_num_batched_tokens - n_dec, self.kv_cap - self.kv_used - n_dec)
            if self.prefilling:
                self._continue_prefills(step)
            if self.waiting:
                self._admit(step)
            if step.chunks:
                self._start_step(step)
                return
        if self.n_dec:
            self._start_segment()
            return
        self._nothing_to_decode()

    def _fit_decodes(self) -> None:
        """Decodes need one more KV slot each; preempt the newest until they fit."""
        while self.n_dec and self.kv_used + self.n_dec > self.kv_cap:
            self._preempt_last()

    def _continue_prefills(self, step: _Step) -> None:
        """The next chunk of each running request still in prefill, while budget and KV last."""
        for req in self.prefilling.values():
            if step.budget <= 0:
                break
            t = req.prefill_left if req.prefill_left < step.budget else step.budget
            if t > step.free:
                break
            step.add(req, t)

    def _admit(self, step: _Step) -> None:
        """Admit waiting requests in order while budget, KV and `max_num_seqs` allow."""
        waiting, running, max_seqs = self.waiting, self.running, self.p.max_num_seqs
        while waiting and step.budget > 0 and len(running) < max_seqs:
            req = waiting[0]
            fresh = req.scheduled is None
            if fresh and req.generated == 0 and req.computed == 0:
                self._prefix_lookup(req)
                step.free = self.kv_cap - self.kv_used - self.n_dec - step.prefill_tokens
            t = req.prefill_left if req.prefill_left < step.budget else step.budget
            if t > step.free:
                break  # not enough KV for its next chunk: wait for a completion
            waiting.popleft()
            if fresh:
                req.scheduled = self.clock.now
            running[req.rid] = req
            self.prefilling[req.rid] = req
            step.add(req, t)

    def _start_step(self, step: _Step) -> None:
        """Run one step with prefill chunks (and every decode)."""
        dt = self.p.step_time(step.prefill_tokens, self.n_dec, self.ctx_dec, step.attention)
        self._event = self.clock.at(self.clock.now + dt, self._step_end, step.chunks)

    def _start_segment(self) -> None:
        """Pure decode: jump to the next completion or to KV exhaustion in one segment."""
        heap, running = self._decode_heap, self.running
        while heap:  # drop completions of requests preempted or aborted since
            top = heap[0]
            if top[3].epoch == top[2] and top[1] in running:
                break
            heapq.heappop(heap)
        n_dec = self.n_dec
        steps = min(heap[0][0] - self.steps, (self.kv_cap - self.kv_used) // n_dec)
        if steps < 1 or not self.analytic:
            steps = 1  # stepping every iteration (the benchmark's reference)
        now, ctx = self.clock.now, self.ctx_dec
        self._segment = (now, steps, n_dec, ctx)
        self._event = self.clock.at(now + self.p.decode_steps_time(steps, n_dec, ctx), self._segment_end, steps)

    def _nothing_to_decode(self) -> None:
        """No step to run: reject a head that can never fit, or report idle."""
        if self.running:
            return
        if self.waiting:
            # Nothing runs and the head still does not fit: it never will.
            req = self.waiting.popleft()
            self.kv_used -= req.computed
            self._reject(req, "prompt does not fit in the KV cache")
            self._plan()
            return
        self.hooks.idle(self)

    def _advance_decodes(self, steps: int) -> None:
        n = self.n_dec * steps
        self.steps += steps
        self.ctx_dec += n
        self.kv_used += n
        self.generation_tokens += n

    def _segment_end(self, steps: int) -> None:
        self._advance_decodes(steps)
        heap = self._decode_heap
        if heap and heap[0][0] <= self.steps:
            self._finish_decodes()
        if self._aborted:
            self._apply_aborts()
        self._plan()

    def _step_end(self, chunks: list[tuple[Request, int]]) -> None:
        now = self.clock.now
        self._advance_decodes(1)
        for req, t in chunks:
            req.prefill_left -= t
            req.computed += t
            self.kv_used += t
            if req.prefill_left > 0:
                continue
            # Prefill done: this step sampled the next token.
            del self.prefilling[req.rid]
            req.generated += 1
            self.generation_tokens += 1
            self.kv_used += 1
            if req.first_token is None:
                # vllm:prompt_tokens counts each whole prompt once, cached tokens included, when
                # its prefill completes (v1/metrics/stats.py IterationStats.num_prompt_tokens,
                # recorded by loggers.py PrometheusStatLogger.record).
                self.prompt_tokens += req.prompt
                req.first_token = now
                self.ttft_sum += now - req.arrival
                self.ttft_count += 1
                if req.scheduled is not None:
                    self.queue_sum += req.scheduled - req.queued
                    self.queue_count += 1
                self._prefix_insert(req)
                self.hooks.first_token(req)
            if req.generated >= req.output:
                self._finish(req)
                continue
            req.join_step = self.steps
            req.join_generated = req.generated
            self.n_dec += 1
            self.ctx_dec += req.prompt + req.generated
            heapq.heappush(
                self._decode_heap,
                (self.steps + req.output - req.generated, req.rid, req.epoch, req),
            )
        self._finish_decodes()
        if self._aborted:
            self._apply_aborts()
        self._plan()

    def _finish_decodes(self) -> None:
        heap = self._decode_heap
        while heap and heap[0][0] <= self.steps:
            _, rid, epoch, req = heapq.heappop(heap)
            if req.epoch != epoch or rid not in self.running or rid in self.prefilling:
                continue
            self.n_dec -= 1
            self.ctx_dec -= req.prompt + req.output
            req.generated = req.output
            self._finish(req)

    def _finish(self, req: Request) -> None:
        if req.rid in self._aborted:
            self._aborted.discard(req.rid)
            self.kv_used -= req.prompt + req.generated
            del self.running[req.rid]
            return
        req.finished = self.clock.now
        self.kv_used -= req.prompt + req.generated
        del self.running[req.rid]
        self.requests_finished += 1
        self.hooks.finished(req)
