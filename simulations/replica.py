"""The replica model: one vLLM V1 engine's scheduler and timing.

This is the single replica model of qscale: the simulator runs it against a
simulated clock and the emulated server runs it against the wall clock. It
needs only a clock with `now`, `at(time, fn, *args) -> handle` and `cancel(handle)`.

Scheduler behaviour, following vLLM V1's FCFS `Scheduler.schedule` (v1/core/sched/scheduler.py):

* a request reaches the scheduler `frontend_s` after it is submitted (the api server);
* every step, running requests are served first: each decode gets one token, an unfinished
  prefill its next chunk; then waiting requests are admitted in order while the step's
  token budget (`max_num_batched_tokens`) lasts and fewer than `max_num_seqs` run
  (chunked prefill: a long prompt spans steps);
* KV cache in tokens (`num_gpu_blocks x block_size`), allocated when a step is scheduled:
  a waiting request is admitted only if all its remaining tokens fit; when a running
  request's decode slot or next chunk does not fit, the most recently admitted running
  request is preempted (possibly itself) and recomputed later, back at the front of the
  queue; a step that preempted admits no one;
* prefix caching lives in the KV cache, in the trace's hash blocks (`prefix_block_tokens`,
  `Request.hashes`): a block is cached once a scheduled chunk fills it, shared by the
  running requests that hit it (held once), kept after they finish as free, evictable
  space (LRU, evicted only when an allocation needs the room); every admission with no
  computed tokens looks it up, a re-admitted preempted request included. A request with
  no hashes never hits.

Speed: while the batch is pure decode and nothing can be admitted, every step
has the same shape, so the model jumps straight to the next completion (or KV
exhaustion) in closed form (`PerformanceProfile.decode_steps_time`). An
arrival that could be admitted cuts the run short at the next step boundary.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Hashable
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
    """The step being planned: its token budget left and its prefill chunks so far."""

    __slots__ = ("budget", "chunks", "prefill_tokens")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.chunks: list[tuple[Request, int]] = []
        self.prefill_tokens = 0

    def add(self, req: Request, tokens: int) -> None:
        self.chunks.append((req, tokens))
        self.budget -= tokens
        self.prefill_tokens += tokens

    def attention(self) -> float:
        """Attention pairs of its prefill chunks, each after the request's computed tokens
        (cached ones included): the sum of `profile.prefill_attention`."""
        return sum(prefill_attention(req.computed, t) for req, t in self.chunks)


class PrefixBlocks:
    """The cached prefix blocks of one replica's KV cache, in the trace's hash blocks.

    As in vLLM's BlockPool (v1/core/block_pool.py), a cached block is either held by
    running requests (`held`: key -> reference count, vLLM's ref_cnt > 0; it counts once in
    the KV usage however many requests share it) or free (`free`: nobody holds it, it can
    still be hit, and it is evicted, least recently freed first, only when an allocation
    needs its room: the cached tail of vLLM's free_block_queue).
    """

    __slots__ = ("block", "free", "held")

    def __init__(self, block_tokens: int) -> None:
        self.block = block_tokens
        self.held: dict[Hashable, int] = {}
        self.free: OrderedDict[Hashable, None] = OrderedDict()

    @property
    def free_tokens(self) -> int:
        return len(self.free) * self.block

    def key(self, req: Request, k: int) -> Hashable:
        """Block `k` of `req`: its trace hash while the block is all prompt; a block holding the
        prompt's tail or generated tokens is this request's own (only it can hit it later)."""
        h = req.hashes
        assert h is not None
        if k < len(h) and (k + 1) * self.block <= req.prompt:
            return h[k]
        return (req.rid, k)

    def lookup(self, req: Request) -> list[Hashable]:
        """The leading blocks of `req` that are cached (vLLM KVCacheManager.get_computed_blocks):
        at most num_tokens - 1 tokens, since the last token is recomputed for its logits."""
        limit = (req.prompt + req.generated - 1) // self.block
        held, free = self.held, self.free
        hits = []
        for k in range(limit):
            key = self.key(req, k)
            if key not in held and key not in free:
                break  # chained hashes: a miss ends the hit
            hits.append(key)
        return hits

    def evictable(self, hits: list[Hashable]) -> int:
        """Tokens of `hits` that are free: taking them uses room (vLLM's allocate_slots counts
        them in its free-capacity check, `_get_num_evictable_blocks`)."""
        free = self.free
        return sum(1 for key in hits if key in free) * self.block

    def hold(self, req: Request, hits: list[Hashable]) -> int:
        """`req` takes a reference on its hit blocks (vLLM BlockPool.touch); returns the tokens
        that were free and are now in use."""
        held, free = self.held, self.free
        taken = 0
        for key in hits:
            n = held.get(key)
            if n is None:  # free: it leaves the eviction queue
                del free[key]
                held[key] = 1
                taken += self.block
            else:  # already held by a running request: shared
                held[key] = n + 1
        req.blocks = list(hits)
        req.blocks_seen = len(hits)
        return taken

    def cache(self, req: Request, full: int) -> None:
        """The first `full` blocks of `req` are full: cache the new ones (vLLM
        KVCacheManager.cache_blocks -> BlockPool.cache_full_blocks, called by allocate_slots
        when the chunk that fills them is scheduled, before it is computed)."""
        held, free, blocks = self.held, self.free, req.blocks
        assert blocks is not None
        for k in range(req.blocks_seen, full):
            key = self.key(req, k)
            if key in held or key in free:
                continue  # another copy is cached already: this one stays the request's own
            held[key] = 1
            blocks.append(key)
        if full > req.blocks_seen:
            req.blocks_seen = full

    def release(self, req: Request, tokens: int) -> int:
        """`req` leaves the running set holding `tokens` tokens of KV: its full blocks are
        cached (generated tokens too), then freed tail first, so they are evicted first (vLLM
        SingleTypeKVCacheManager.free -> BlockPool.free_blocks). Returns the KV tokens this
        frees: the request's own tokens plus the blocks nobody holds any more."""
        self.cache(req, tokens // self.block)
        blocks = req.blocks
        assert blocks is not None
        held, free = self.held, self.free
        freed = tokens - len(blocks) * self.block
        for key in reversed(blocks):
            n = held[key] - 1
            if n:
                held[key] = n
            else:
                del held[key]
                free[key] = None
                freed += self.block
        req.blocks = None
        req.blocks_seen = 0
        return freed

    def evict(self, tokens: int) -> None:
        """Evict free blocks, least recently freed first, until `tokens` of room are made
        (vLLM BlockPool.get_new_blocks -> _maybe_evict_cached_block)."""
        free = self.free
        while tokens > 0 and free:
            free.popitem(last=False)
            tokens -= self.block


class ReplicaModel:
    __slots__ = (
        "_cache", "_decode_heap", "_max_batched", "_max_seqs", "_event", "_segment", "analytic", "clock",
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
        self._max_seqs = profile.max_num_seqs  # the profile's limits, read on every step
        self._max_batched = profile.max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}  # admission order
        self.prefilling: dict[int, Request] = {}  # running requests still in prefill
        self._decode_heap: list[tuple[int, int, int, Request]] = []  # (finish step, rid, epoch, req)
        self.steps = 0
        self.n_dec = 0  # requests in decode
        self.ctx_dec = 0.0  # context tokens over decoding requests
        # KV tokens held by running requests (shared prefix blocks once), allocated when a step
        # is scheduled; a decoding request holds prompt + generated - 1 (its last token's KV
        # is written by the next step, which reserves one slot per decode).
        self.kv_used = 0
        self._event: Any = None
        self._segment: tuple[float, int, int, float] | None = None  # start, steps, seqs, ctx0
        self._aborted: set[int] = set()
        self._arriving: dict[int, Any] = {}  # rid -> clock handle, still in the api server
        self._cache = PrefixBlocks(prefix_block_tokens) if prefix_caching else None
        # Cumulative counters, as vLLM's /metrics exposes them.
        self.requests_finished = 0
        self.generation_tokens = 0
        self.prompt_tokens = 0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.queue_sum = 0.0  # time from reaching the scheduler to first scheduled, counted at the first token
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
        """Share of the KV cache held by running requests; free cached blocks count as free
        (vLLM BlockPool.get_usage)."""
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

    def generated_now(self, req: Request) -> int:
        """Tokens generated for `req` so far, progress within a running decode segment included."""
        if req.rid in self.prefilling or req.rid not in self.running:
            return req.generated
        return min(req.output, self._current_generated(req) + self._segment_progress())

    # --- arrivals and departures ------------------------------------------------------

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
        elif self._segment is not None and len(self.running) < self._max_seqs:
            # It may be admitted: end the decode run at the next step boundary.
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
            self.waiting.remove(req)  # a waiting request holds no KV
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
                self._release(req, req.computed)
            else:
                gen = self._current_generated(req)
                self.n_dec -= 1
                self.ctx_dec -= req.prompt + gen
                self._release(req, req.prompt + gen - 1)
                req.epoch += 1
        self._aborted.clear()

    # --- KV cache ---------------------------------------------------------------------

    def _release(self, req: Request, tokens: int) -> None:
        """`req` leaves the running set holding `tokens` tokens of KV."""
        if req.blocks is None:  # no prefix blocks: all its tokens are its own
            self.kv_used -= tokens
            return
        assert self._cache is not None
        self.kv_used -= self._cache.release(req, tokens)

    def _allocate_cached(self, req: Request, tokens: int) -> None:
        """Slots for a scheduled chunk, at scheduling time (vLLM KVCacheManager.allocate_slots),
        with prefix caching: blocks the chunk fills are cached at once; free cached blocks are
        evicted for the room."""
        cache = self._cache
        assert cache is not None
        self.kv_used += tokens
        if req.blocks is not None:
            cache.cache(req, (req.computed + tokens) // cache.block)
        if cache.free:
            self._evict()

    def _evict(self) -> None:
        """Evict free cached blocks the running requests (and this step's decodes) need."""
        cache = self._cache
        assert cache is not None
        over = self.kv_used + self.n_dec + cache.free_tokens - self.kv_cap
        if over > 0:
            cache.evict(over)

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

    def _preempt_last(self) -> None:
        """Preempt the most recently admitted running request (vLLM Scheduler.schedule takes
        `self.running[-1]`; `_preempt_request` frees its blocks, which stay cached, sets its
        computed tokens to 0 and puts it back at the front of the waiting queue)."""
        rid, req = self.running.popitem()
        if rid in self.prefilling:
            del self.prefilling[rid]
            self._release(req, req.computed)
        else:
            gen = self._current_generated(req)
            req.generated = gen
            self.n_dec -= 1
            self.ctx_dec -= req.prompt + gen
            self._release(req, req.prompt + gen - 1)
            req.epoch += 1  # its completion entry in the heap is now stale
        req.computed = 0
        req.prefill_left = req.prompt + req.generated  # recompute prompt and generated tokens
        self.waiting.appendleft(req)
        self.preemptions += 1

    def _plan(self) -> None:
        """Choose the next step (or decode segment) and schedule its end, as one vLLM
        `Scheduler.schedule` call: running requests first (decodes, then unfinished
        prefills), then waiting ones, unless the step preempted."""
        self._event = None
        self._segment = None
        preempted = False
        if self.n_dec and self.kv_used + self.n_dec > self.kv_cap:
            preempted = self._fit_decodes()
        if self.prefilling or (self.waiting and len(self.running) < self._max_seqs):
            step = _Step(self._max_batched - self.n_dec)
            if self.prefilling:
                preempted = self._continue_prefills(step) or preempted
            if self.waiting and not preempted:
                # vLLM Scheduler.schedule: the waiting loop runs only `if not preempted_reqs`.
                self._admit(step)
            if step.chunks:
                self._start_step(step)
                return
        if self.n_dec:
            # After a preemption the head may fit at the next step: run one step only.
            self._start_segment(preempted and bool(self.waiting))
            return
        self._nothing_to_decode(preempted)

    def _fit_decodes(self) -> bool:
        """Each decode needs one more KV slot; while they do not fit, preempt the newest
        running request (vLLM's running loop: allocate_slots fails -> preempt running[-1]).
        Called when they do not fit, so it always preempts: returns True."""
        while self.n_dec and self.kv_used + self.n_dec > self.kv_cap:
            self._preempt_last()
        return True

    def _continue_prefills(self, step: _Step) -> bool:
        """The next chunk of each running request still in prefill, while the budget lasts.
        A chunk that does not fit in the KV cache does not wait: as in vLLM's running loop,
        the newest running request is preempted (possibly this one) until it fits. True if
        anything was preempted."""
        preempted = False
        for req in list(self.prefilling.values()):
            if req.rid not in self.prefilling or step.budget <= 0:
                break  # preempted by an older request's chunk, or no budget left
            while True:
                t = req.prefill_left if req.prefill_left < step.budget else step.budget
                if t <= self.kv_cap - self.kv_used - self.n_dec:
                    break
                self._preempt_last()  # allocate_slots failed: preempt running[-1]
                preempted = True
                if req.rid not in self.running:
                    return True  # it preempted itself: vLLM's running loop stops here
                # A preempted decode gives its token of the budget back.
                step.budget = self._max_batched - self.n_dec - step.prefill_tokens
            cache = self._cache
            if req.blocks is None and (cache is None or not cache.free):
                self.kv_used += t  # allocated when scheduled (vLLM allocate_slots); nothing to cache
            else:
                self._allocate_cached(req, t)
            step.add(req, t)
        return preempted

    def _admit(self, step: _Step) -> None:
        """Admit waiting requests in order while budget, KV and `max_num_seqs` allow (vLLM
        Scheduler.schedule, the waiting loop; FCFS: a head that does not fit stops it)."""
        waiting, running, max_seqs, cache = self.waiting, self.running, self._max_seqs, self._cache
        if cache is not None and cache.free:
            self._evict()
        while waiting and step.budget > 0 and len(running) < max_seqs:
            req = waiting[0]
            tokens = req.prompt + req.generated  # vLLM num_tokens: a resumed request recomputes its output
            # Every admission with no computed tokens looks the prefix cache up (get_computed_blocks).
            hits = cache.lookup(req) if cache is not None and req.hashes else []
            cached = len(hits) * self.prefix_block_tokens
            need = tokens - cached + (cache.evictable(hits) if hits else 0)
            if need > self.kv_cap - self.kv_used - self.n_dec:
                # vLLM allocate_slots(full_sequence_must_fit=scheduler_reserve_full_isl): its whole
                # sequence must fit, not just the first chunk; wait for a completion.
                break
            waiting.popleft()
            self._start_running(req, hits, cached)
            t = req.prefill_left if req.prefill_left < step.budget else step.budget
            if req.blocks is None and (cache is None or not cache.free):
                self.kv_used += t  # allocated when scheduled (vLLM allocate_slots); nothing to cache
            else:
                self._allocate_cached(req, t)
            step.add(req, t)

    def _start_running(self, req: Request, hits: list[Hashable], cached: int) -> None:
        """`req` is admitted with `cached` tokens hit in the prefix cache."""
        if req.scheduled is None:
            req.scheduled = self.clock.now
            req.cached_tokens = cached
            if self.prefix_caching:
                # vLLM KVCacheManager.record_prefix_cache_stats, at admission; PrefixCacheStats.record
                # counts a preempted request's lookups apart (not in vllm:prefix_cache_queries/hits).
                self.prefix_queries += req.prompt
                self.prefix_hits += cached
        if self._cache is not None and req.hashes:
            self.kv_used += self._cache.hold(req, hits)
        req.computed = cached
        req.prefill_left = req.prompt + req.generated - cached
        self.running[req.rid] = req
        self.prefilling[req.rid] = req

    def _start_step(self, step: _Step) -> None:
        """Run one step with prefill chunks (and every decode)."""
        p = self.p
        attention = step.attention() if p.prefill_attention_s else 0.0  # only priced when fitted
        dt = p.step_time(step.prefill_tokens, self.n_dec, self.ctx_dec, attention)
        self._event = self.clock.at(self.clock.now + dt, self._step_end, step.chunks)

    def _start_segment(self, single: bool = False) -> None:
        """Pure decode: jump to the next completion or to KV exhaustion in one segment."""
        heap, running = self._decode_heap, self.running
        while heap:  # drop completions of requests preempted or aborted since
            top = heap[0]
            if top[3].epoch == top[2] and top[1] in running:
                break
            heapq.heappop(heap)
        n_dec = self.n_dec
        steps = heap[0][0] - self.steps
        room = (self.kv_cap - self.kv_used) // n_dec  # steps until the KV cache is full
        if room < steps:
            steps = room
        if steps < 1 or single or not self.analytic:
            steps = 1  # one step at a time (also the benchmark's reference)
        now, ctx = self.clock.now, self.ctx_dec
        self._segment = (now, steps, n_dec, ctx)
        self._event = self.clock.at(now + self.p.decode_steps_time(steps, n_dec, ctx), self._segment_end, steps)

    def _nothing_to_decode(self, preempted: bool) -> None:
        """No step to run: reject a head that can never fit, or report idle."""
        if self.running:
            return
        if self.waiting and preempted:
            self._plan()  # this step could not admit: the next one may
            return
        if self.waiting:
            # Nothing runs and the head still does not fit: it never will.
            self._reject(self.waiting.popleft(), "prompt does not fit in the KV cache")
            self._plan()
            return
        self.hooks.idle(self)

    # --- step ends --------------------------------------------------------------------

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
        self._advance_decodes(1)
        for req, t in chunks:
            req.prefill_left -= t
            req.computed += t  # its KV was allocated when the step was scheduled
            if req.prefill_left == 0:
                self._prefill_done(req)
        heap = self._decode_heap
        if heap and heap[0][0] <= self.steps:
            self._finish_decodes()
        if self._aborted:
            self._apply_aborts()
        self._plan()

    def _prefill_done(self, req: Request) -> None:
        """The step that finished `req`'s prefill sampled its next token (its first, unless it
        is recomputing after a preemption)."""
        del self.prefilling[req.rid]
        req.generated += 1
        self.generation_tokens += 1
        if req.first_token is None:
            # vllm:prompt_tokens counts each whole prompt once, cached tokens included, when
            # its prefill completes (v1/metrics/stats.py IterationStats.num_prompt_tokens,
            # recorded by loggers.py PrometheusStatLogger.record).
            self.prompt_tokens += req.prompt
            now = req.first_token = self.clock.now
            self.ttft_sum += now - req.arrival
            self.ttft_count += 1
            if req.scheduled is not None:
                self.queue_sum += req.scheduled - req.queued  # Request.queue_s, inlined: hot path
                self.queue_count += 1
            self.hooks.first_token(req)
        if req.generated >= req.output:
            self._finish(req)
            return
        req.join_step = self.steps
        req.join_generated = req.generated
        self.n_dec += 1
        self.ctx_dec += req.prompt + req.generated
        heapq.heappush(self._decode_heap, (self.steps + req.output - req.generated, req.rid, req.epoch, req))

    def _finish_decodes(self) -> None:
        heap = self._decode_heap
        while heap and heap[0][0] <= self.steps:
            _, rid, epoch, req = heapq.heappop(heap)
            if req.epoch != epoch or rid not in self.running or rid in self.prefilling:
                continue  # preempted or aborted since
            self.n_dec -= 1
            self.ctx_dec -= req.prompt + req.output
            req.generated = req.output
            self._finish(req)

    def _finish(self, req: Request) -> None:
        del self.running[req.rid]
        if req.blocks is None:  # _release's plain case, inlined: hot path
            self.kv_used -= req.prompt + req.generated - 1
        else:
            self._release(req, req.prompt + req.generated - 1)
        if req.rid in self._aborted:  # aborted in the step that finished it: already counted
            self._aborted.discard(req.rid)
            return
        req.finished = self.clock.now
        self.requests_finished += 1
        self.hooks.finished(req)
