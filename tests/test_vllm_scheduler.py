"""The replica model against vLLM V1's scheduler (vLLM 0.32.0, v1/core/sched/scheduler.py and
v1/core/*kv_cache_manager.py, block_pool.py), one scenario per behaviour.

Each expected outcome is worked out by hand from vLLM's code, in tokens: the model keeps the
KV cache in tokens and the prefix cache in the trace's 512-token hash blocks, where vLLM
uses 16-token blocks for both, so the scenarios use sizes where that does not change the
outcome (or say where it would).
"""

import pytest

from simulations.profile import load_profile
from simulations.replica import ReplicaModel
from simulations.request import Request
from tests.sim_helpers import one_replica, tiny_profile


def small(kv_tokens: int, **kw):
    """A profile whose KV cache holds `kv_tokens` tokens (16-token blocks)."""
    return tiny_profile(num_gpu_blocks=kv_tokens // 16, max_model_len=kv_tokens, max_num_seqs=8, **kw)


def spy_plans(monkeypatch) -> list[dict]:
    """Record, for every planned step, whether it preempted and whether it admitted anyone."""
    plans: list[dict] = []
    plan, preempt, start = ReplicaModel._plan, ReplicaModel._preempt_last, ReplicaModel._start_running

    def _plan(self):
        plans.append({"preempted": 0, "admitted": 0})
        plan(self)

    def _preempt_last(self):
        plans[-1]["preempted"] += 1
        preempt(self)

    def _start_running(self, req, hits, cached):
        plans[-1]["admitted"] += 1
        start(self, req, hits, cached)

    monkeypatch.setattr(ReplicaModel, "_plan", _plan)
    monkeypatch.setattr(ReplicaModel, "_preempt_last", _preempt_last)
    monkeypatch.setattr(ReplicaModel, "_start_running", _start_running)
    return plans


def test_a_step_that_preempted_admits_no_one(monkeypatch):
    """vLLM Scheduler.schedule runs its waiting loop only `if not preempted_reqs`.

    KV 1024 tokens. A (701 + 300) prefills in step 1 (B arrives while it runs); step 2 runs
    A's first decode and admits B (200 + 300; 200 <= 1024 - 702), which samples its first
    token: the cache holds 902. Each decode step then allocates one slot per request: 902 +
    2k <= 1024 holds up to k = 61, so scheduling the next step the slots do not fit:
    allocate_slots fails and B, `self.running[-1]`, is preempted (`_preempt_request`: its 261
    tokens freed, computed 0, back at the front of the queue). Nothing is admitted in that
    step. B now needs its 262 tokens (200 + 62 generated, recomputed) while at most 1024 -
    764 = 260 are free and A grows by one each step, so B waits for A to finish, then
    recomputes 262 tokens alone: one preemption, no thrash.
    """
    plans = spy_plans(monkeypatch)
    p = small(1024)
    loop, rep, rec = one_replica(p)
    a, b = Request(0, 0.0, 701, 300), Request(1, 0.0, 200, 300)
    loop.at(0.0, rep.submit, a)
    loop.at(0.0, rep.submit, b)
    loop.run_until(60)
    assert rep.preemptions == 1
    assert not any(s["preempted"] and s["admitted"] for s in plans)
    assert a.finished is not None and b.generated == 300
    # B's recompute: 262 tokens in one step right after A finished, then 237 decodes.
    resume = p.step_time(262, 0, 0)
    decodes = sum(p.step_time(0, 1, 263 + k) for k in range(237))
    assert b.finished == pytest.approx(a.finished + resume + decodes)


def test_a_running_prefill_whose_chunk_does_not_fit_preempts_instead_of_stalling():
    """vLLM Scheduler.schedule, running loop: when allocate_slots fails for a running request,
    `self.running[-1]` is preempted until it succeeds or the request itself was preempted.

    KV 1024, 128 tokens per step. Step 1: A (100 + 300) prefills alone (P arrives while it
    runs). Step 2: A decodes (1 slot) and P (920 + 10) is admitted, since its whole 920 fits
    (920 <= 1024 - 101; scheduler_reserve_full_isl), with a 127-token chunk. Steps 3-8: the
    same, P reaching 889 computed and A holding 107. Scheduling step 9: A's slot fits, P's
    last 31 tokens do not (108 + 889 + 31 > 1024): P is `self.running[-1]` and preempts
    itself, freeing 889 tokens; it does not sit in the cache waiting. So P leaves the running
    set when A has generated 8 tokens (steps 1-8), and comes back only when A is done.
    """
    p = small(1024, max_num_batched_tokens=128)
    loop, rep, rec = one_replica(p)
    a, pre = Request(0, 0.0, 100, 300), Request(1, 0.0, 920, 10)
    loop.at(0.0, rep.submit, a)
    loop.at(0.0, rep.submit, pre)
    while pre.rid not in rep.running:
        loop.run_until(loop.now + 1e-4)
    while pre.rid in rep.running:
        loop.run_until(loop.now + 1e-4)
    assert rep.generated_now(a) == 8
    assert pre.computed == 0 and rep.waiting[0] is pre and rep.preemptions == 1
    loop.run_until(60)
    assert pre.first_token > a.finished and rep.preemptions == 1


def test_finished_requests_blocks_stay_cached_free_and_are_evicted_lru_tail_first():
    """vLLM BlockPool: a finished request's blocks are freed in reverse order
    (SingleTypeKVCacheManager.free) and appended to the free queue (free_blocks), so they
    count as free (get_usage) but keep their hash; get_new_blocks takes blocks from the
    queue's front and evicts a cached one (_maybe_evict_cached_block) only when no uncached
    free block is left.

    KV 2080 tokens. X (hash blocks 1, 2 of a 1025-token prompt) then Y (4, 5) finish: the
    free queue's cached part is X2, X1, Y5, Y4 (2048 tokens), usage 0. Z (500 tokens, no
    hashes) needs 500 of room while only 32 are uncached: one block is evicted, the least
    recently freed, X's tail block 2. Then X again hits only its block 1 (512 tokens) and Y
    again both (1024). Without Z nothing is evicted and X hits 1024.
    """
    def run(with_z: bool):
        loop, rep, rec = one_replica(small(2080))
        reqs = [Request(0, 0.0, 1025, 1, (1, 2, 3)), Request(1, 1.0, 1025, 1, (4, 5, 6))]
        if with_z:
            reqs.append(Request(2, 2.0, 500, 1))
        reqs += [Request(3, 3.0, 1025, 1, (1, 2, 3)), Request(4, 4.0, 1025, 1, (4, 5, 6))]
        for r in reqs:
            loop.at(r.arrival, rep.submit, r)
        loop.run_until(1.5)
        assert rep.kv_usage() == 0.0  # free cached blocks count as free
        loop.run_until(10)
        return rep, reqs[-2], reqs[-1]

    rep, x, y = run(with_z=True)
    assert (x.cached_tokens, y.cached_tokens) == (512, 1024)
    assert rep.prefix_hits == 1536 and rep.prefix_queries == 4 * 1025 + 500
    rep, x, y = run(with_z=False)
    assert (x.cached_tokens, y.cached_tokens) == (1024, 1024)


def test_blocks_held_by_a_running_request_are_never_evicted():
    """vLLM BlockPool.touch takes a hit block off the free queue (ref_cnt > 0), and only
    free-queue blocks are evicted (get_new_blocks). KV 4096. T (blocks 7, 8) finishes and
    its blocks are free; R (blocks 1, 2) is decoding for seconds. F (3000 tokens, no hashes)
    then needs room: R holds ~1040 and the free cached blocks are T's 1024, so both of T's
    blocks are evicted and none of R's. T's prefix again misses; R's prefix hits 1024."""
    loop, rep, rec = one_replica(small(4096))
    t = Request(0, 0.0, 1025, 1, (7, 8, 9))
    r = Request(1, 0.05, 1025, 1000, (1, 2, 3))
    f = Request(2, 0.1, 3000, 1)
    t2, s = Request(3, 0.5, 1025, 1, (7, 8, 9)), Request(4, 0.6, 1025, 1, (1, 2, 3))
    for q in (t, r, f, t2, s):
        loop.at(q.arrival, rep.submit, q)
    loop.run_until(1.0)
    assert r.finished is None and f.finished is not None
    assert t2.cached_tokens == 0 and s.cached_tokens == 1024


def test_requests_sharing_a_prefix_hold_it_once_and_hit_blocks_still_being_prefilled():
    """vLLM KVCacheManager.allocate_slots caches the blocks a chunk fills when the chunk is
    scheduled (cache_blocks, before it is computed), and a later admission's
    get_computed_blocks finds them; touch adds a reference instead of a copy.

    1024 tokens per step. A (2049 tokens, hash blocks 1-4) takes step 1 (tokens 0-1023:
    blocks 1, 2 cached) and step 2 (1024-2047: blocks 3, 4 cached) whole; B, same prefix,
    arrives during step 1 and finds no budget in step 2. Step 3: A's last token, then B is admitted with 2048 tokens hit (at
    most num_tokens - 1 = 2048) and computes 1. Both sample their first token at the end of
    step 3, and the cache holds the four shared blocks once: 2048 + 1 + 1 tokens.
    """
    p = tiny_profile(max_num_batched_tokens=1024)
    loop, rep, rec = one_replica(p)
    hashes = (1, 2, 3, 4, 5)
    a, b = Request(0, 0.0, 2049, 50, hashes), Request(1, 0.0, 2049, 50, hashes)
    loop.at(0.0, rep.submit, a)
    loop.at(0.0, rep.submit, b)
    loop.run_until(1e-3)
    assert rep.num_waiting == 1
    while a.first_token is None:  # then stop within a millisecond: before the next decode step
        loop.run_until(loop.now + 1e-3)
    assert b.cached_tokens == 2048 and a.first_token == b.first_token
    assert rep.kv_usage() * rep.kv_cap == pytest.approx(2048 + 1 + 1)
    assert rep.prefix_hits == 2048 and rep.prefix_queries == 2 * 2049


def test_a_preempted_request_hits_its_own_blocks_generated_tokens_included_when_readmitted():
    """vLLM: `_preempt_request` frees the request's blocks (they stay cached, free), sets
    num_computed_tokens to 0, and the waiting loop looks the cache up again for any request
    with no computed tokens (get_computed_blocks), its output tokens included: they were
    cached as they filled blocks (allocate_slots caches up to num_tokens). Its lookups are
    not counted in vllm:prefix_cache_queries/hits (PrefixCacheStats.record, `preempted`).

    KV 2048. A (1025 + 462, blocks 1, 2) prefills in step 1; B (300 + 1000, hashes (4,): no
    full prompt block), arriving meanwhile, prefills in step 2 beside A's first decode (1326
    held); then 2 slots per decode step: 1326 + 2k <= 2048 up to k = 361. Scheduling the next step B is preempted with 362 tokens generated, holding 661:
    its first 512 (300 prompt + 212 generated) fill a block, which stays cached. A holds at
    most 1486 (+ 1 slot + that free block <= 2048), so nothing is evicted. B, needing 662 tokens, waits for A to
    finish, then hits its block (512) and recomputes 150 tokens: its next token comes one
    150-token step after A finished (vLLM's 16-token blocks would hit 656).
    """
    p = small(2048)
    loop, rep, rec = one_replica(p)
    a, b = Request(0, 0.0, 1025, 462, (1, 2, 3)), Request(1, 0.0, 300, 1000, (4,))
    loop.at(0.0, rep.submit, a)
    loop.at(0.0, rep.submit, b)
    while a.finished is None:
        loop.run_until(loop.now + 1e-3)
    assert rep.preemptions == 1 and b.generated == 362
    resumed = a.finished + p.step_time(150, 0, 0)
    loop.run_until(resumed - 1e-9)
    assert rep.generated_now(b) == 362
    loop.run_until(resumed + 1e-9)
    assert rep.generated_now(b) == 363
    assert rep.prefix_queries == 1025 + 300 and rep.prefix_hits == 0


def test_a_request_without_hashes_never_hits():
    loop, rep, rec = one_replica()
    a, b = Request(0, 0.0, 2048, 2), Request(1, 5.0, 2048, 2)
    loop.at(0.0, rep.submit, a)
    loop.at(5.0, rep.submit, b)
    loop.run_until(10)
    assert b.cached_tokens == 0 and rep.prefix_hits == 0 and rep.prefix_queries == 4096


@pytest.mark.parametrize(("name", "seqs", "tokens"), [
    ("llama3-8b-h100", 1024, 8192),
    ("llama31-8b-128k-h100", 1024, 8192),
    ("llama3-8b-a100", 256, 2048),
])
def test_profiles_use_vllm_batch_defaults_for_the_openai_server(name, seqs, tokens):
    """vLLM EngineArgs.get_batch_defaults, OPENAI_API_SERVER: device memory >= 70 GiB and not
    an A100 (an 80 GB H100) -> max_num_seqs 1024, max_num_batched_tokens 8192; an A100 falls
    to the other-hardware row -> 256 and 2048 (PR #17885: larger batches slowed A100s)."""
    p = load_profile(name)
    assert (p.max_num_seqs, p.max_num_batched_tokens) == (seqs, tokens)
