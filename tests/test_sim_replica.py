"""The replica model: vLLM V1 scheduling, KV cache, preemption, analytic decode."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.profile import load_profile
from simulations.request import Request
from tests.sim_helpers import one_replica, tiny_profile

H100 = load_profile("llama3-8b-h100")


def test_single_request_timing_matches_the_profile():
    loop, rep, rec = one_replica()
    req = Request(0, 0.0, 1000, 100)
    loop.at(0.0, rep.submit, req)
    loop.run_until(60)
    assert req.first_token == pytest.approx(H100.step_time(1000, 0, 0))
    # 99 more tokens, one per decode step, contexts 1001..1099.
    decode = sum(H100.step_time(0, 1, 1001 + k) for k in range(99))
    assert req.finished - req.first_token == pytest.approx(decode)
    assert rep.kv_used == 0 and rep.requests_finished == 1 and rep.generation_tokens == 100


def test_chunked_prefill_spans_steps_under_the_token_budget():
    p = tiny_profile(max_num_batched_tokens=1024)
    loop, rep, rec = one_replica(p)
    req = Request(0, 0.0, 3000, 5)
    loop.at(0.0, rep.submit, req)
    loop.run_until(60)
    # 3000 tokens at 1024 per step: 1024 + 1024 + 952, three steps before the first token.
    expected = p.step_time(1024, 0, 0) * 2 + p.step_time(952, 0, 0)
    assert req.first_token == pytest.approx(expected)


def test_max_num_seqs_bounds_the_batch():
    p = tiny_profile(max_num_seqs=4)
    loop, rep, rec = one_replica(p)
    peak = []
    for i in range(10):
        loop.at(0.0, rep.submit, Request(i, 0.0, 100, 50))
    t = 0.0
    while t < 30:
        t += 0.01
        loop.run_until(t)
        peak.append(rep.num_running)
    assert max(peak) == 4
    assert len(rec.finished_reqs) == 10
    # The fifth request waited for a slot.
    fifth = sorted(rec.finished_reqs, key=lambda r: r.scheduled)[4]
    assert fifth.scheduled > 0


def test_kv_exhaustion_preempts_and_everything_still_finishes():
    # 64 blocks x 16 = 1024 tokens of KV: four requests of 200 + 300 cannot all decode.
    p = tiny_profile(num_gpu_blocks=64, max_num_seqs=8, max_model_len=1024)
    loop, rep, rec = one_replica(p)
    for i in range(4):
        loop.at(0.0, rep.submit, Request(i, 0.0, 200, 300))
    loop.run_until(120)
    assert rep.preemptions > 0
    assert len(rec.finished_reqs) == 4
    assert rep.kv_used == 0
    assert all(r.generated == 300 for r in rec.finished_reqs)


def test_admission_waits_while_the_cache_is_full():
    p = tiny_profile(num_gpu_blocks=64, max_num_seqs=8, max_model_len=1024)  # 1024 tokens
    loop, rep, rec = one_replica(p)
    loop.at(0.0, rep.submit, Request(0, 0.0, 900, 50))
    loop.at(0.0, rep.submit, Request(1, 0.0, 500, 5))
    loop.run_until(0.05)
    assert rep.num_running == 1 and rep.num_waiting == 1
    loop.run_until(60)
    assert len(rec.finished_reqs) == 2


def test_prompt_longer_than_the_model_is_rejected():
    loop, rep, rec = one_replica()
    loop.at(0.0, rep.submit, Request(0, 0.0, H100.max_model_len + 10, 5))
    loop.run_until(1)
    assert len(rec.rejected_reqs) == 1


def test_prefix_cache_skips_cached_blocks():
    loop, rep, rec = one_replica()
    a = Request(0, 0.0, 2048, 2, hashes=(1, 2, 3, 4))
    b = Request(1, 10.0, 2048, 2, hashes=(1, 2, 3, 9))
    loop.at(0.0, rep.submit, a)
    loop.at(10.0, rep.submit, b)
    loop.run_until(30)
    assert b.cached_tokens == 3 * 512
    assert rep.prefix_hits == 3 * 512 and rep.prefix_queries == 4096
    assert b.ttft_s < a.ttft_s


def test_arrival_during_a_decode_run_joins_at_the_next_step():
    loop, rep, rec = one_replica()
    long = Request(0, 0.0, 100, 2000)
    late = Request(1, 1.0, 100, 2)
    loop.at(0.0, rep.submit, long)
    loop.at(1.0, rep.submit, late)
    loop.run_until(100)
    # It waited at most one decode step for the boundary, then its own prefill step.
    assert late.ttft_s < 2 * H100.step_time(100, 1, 2100)


@settings(max_examples=200, deadline=None)
@given(steps=st.integers(0, 5000), seqs=st.integers(1, 256), ctx=st.floats(0, 2e6))
def test_closed_form_decode_equals_stepping(steps, seqs, ctx):
    closed = H100.decode_steps_time(steps, seqs, ctx)
    stepped = sum(H100.step_time(0, seqs, ctx + k * seqs) for k in range(min(steps, 300)))
    if steps <= 300:
        assert closed == pytest.approx(stepped, rel=1e-9, abs=1e-12)
    # The inverse finds exactly the whole steps that fit.
    assert H100.decode_steps_done(closed + 1e-12, seqs, ctx) >= steps
    if steps > 0:
        assert H100.decode_steps_done(closed * (1 - 1e-9) - 1e-12, seqs, ctx) == steps - 1 or math.isclose(
            closed, 0.0
        )


def test_abort_frees_the_request_queued_or_running():
    p = tiny_profile(max_num_seqs=1)
    loop, rep, rec = one_replica(p)
    a, b = Request(0, 0.0, 100, 500), Request(1, 0.0, 100, 5)
    loop.at(0.0, rep.submit, a)
    loop.at(0.0, rep.submit, b)
    loop.run_until(0.5)
    assert rep.abort(b) and rep.num_waiting == 0  # queued: gone at once
    assert rep.abort(a)  # running: gone at the next step boundary
    loop.run_until(1.0)
    assert rep.num_running == 0 and rep.kv_used == 0 and rep.n_dec == 0
    assert rec.finished_reqs == [] and rep.requests_finished == 2
    assert not rep.abort(a)


def test_prefill_steps_pay_for_attention_over_cached_and_earlier_chunks():
    p = tiny_profile(max_num_batched_tokens=1024, prefill_attention_s=1e-9)
    loop, rep, rec = one_replica(p)
    req = Request(0, 0.0, 2000, 2)
    loop.at(0.0, rep.submit, req)
    loop.run_until(60)
    # Two chunks: 1024 tokens after none computed, then 976 after the first 1024.
    first = p.step_time(1024, 0, 0, 1024 * (0 + 1025 / 2))
    second = p.step_time(976, 0, 0, 976 * (1024 + 977 / 2))
    assert req.first_token == pytest.approx(first + second)


def test_frontend_time_comes_before_the_queue_and_an_abort_there_still_works():
    p = tiny_profile(frontend_s=0.5)
    loop, rep, rec = one_replica(p)
    a, b = Request(0, 0.0, 100, 2), Request(1, 0.0, 100, 2)
    loop.at(0.0, rep.submit, a)
    loop.at(0.0, rep.submit, b)
    loop.run_until(0.25)
    # Still in the api server: not waiting in the scheduler, but outstanding.
    assert rep.figures().waiting == 0 and rep.outstanding == 2
    assert rep.abort(b) and rep.outstanding == 1 and rep.requests_finished == 1
    loop.run_until(60)
    assert a.scheduled == pytest.approx(0.5)
    assert a.first_token == pytest.approx(0.5 + p.step_time(100, 0, 0))
    assert rec.finished_reqs == [a] and b.first_token is None
