from policies import SignalsBuilder
from tests.helpers import READY, STARTING, missing, reading, ready, starting


def test_totals_and_counts():
    b = SignalsBuilder()
    s = b.build(10.0, [ready("a", 3, 4), ready("b", 1, 2), starting("c", 5.0)], current_replicas=3)
    assert (s.total_waiting, s.total_running) == (4, 6)
    assert (s.ready_replicas, s.starting_replicas) == (2, 1)
    assert s.complete and s.arrival_rate is None


def test_arrival_rate_is_finished_plus_inflight_change():
    b = SignalsBuilder()
    b.build(0.0, [ready("a", 0, 2, finished=10)], 1)
    # 2 s later: 6 more finished and 4 more in flight -> 10 arrivals in 2 s.
    s = b.build(2.0, [ready("a", 2, 4, finished=16)], 1)
    assert s.arrival_rate == 5.0
    assert s.completion_rate == 3.0


def test_counter_reset_counts_from_zero():
    b = SignalsBuilder()
    b.build(0.0, [ready("a", 0, 0, finished=100)], 1)
    s = b.build(1.0, [ready("a", 0, 0, finished=3)], 1)  # the server restarted
    assert s.completion_rate == 3.0


def test_unreadable_ready_replica_marks_data_incomplete():
    b = SignalsBuilder()
    s = b.build(0.0, [ready("a", 5, 5), missing("b"), starting("c")], 3)
    assert not s.complete and s.missing == ("b",)
    assert s.total_waiting == 5  # the missing replica contributes nothing
    # A starting replica without a server is expected, not missing.
    assert [r.state for r in s.replicas] == [READY, READY, STARTING]


def test_ttft_and_prefix_hit_rate_from_deltas():
    b = SignalsBuilder()
    r0 = reading("a", READY, 0.0, ttft_sum=1.0, ttft_count=2, prefix_queries=100, prefix_hits=50,
                        requests_finished=0, generation_tokens=0)
    r1 = reading("a", READY, 0.0, ttft_sum=4.0, ttft_count=5, prefix_queries=200, prefix_hits=140,
                        requests_finished=0, generation_tokens=500)
    b.build(0.0, [r0], 1)
    s = b.build(5.0, [r1], 1)
    assert s.mean_ttft_s == 1.0
    assert s.prefix_cache_hit_rate == 0.9
    assert s.generation_tokens_per_s == 100.0


def test_nan_inf_and_negative_readings_never_enter():
    b = SignalsBuilder()
    b.build(0.0, [ready("a", 1, 2, finished=10), ready("b", 1, 2, finished=10)], 2)
    for bad in ({"waiting": float("nan")}, {"running": float("inf")}, {"requests_finished": -5.0},
                {"kv_cache_usage": float("-inf")}):
        s = b.build(2.0, [ready("a", 1, 2, finished=12), reading("b", READY, 0.0, **{
            "waiting": 1, "running": 2, "requests_finished": 12, **bad})], 2)
        field = next(iter(bad))
        assert s.missing == ("b",) and not s.complete
        assert s.rejected_readings and s.rejected_readings[0].startswith(f"b: {field}=")
        assert (s.total_waiting, s.total_running) == (1, 2)  # only the sane replica counts
    s = b.build(4.0, [ready("a", 1, 2, finished=14), ready("b", 1, 2, finished=14)], 2)
    assert s.complete and s.rejected_readings == ()
