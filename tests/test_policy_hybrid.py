"""qscale's hybrid policy on hand-written scenarios."""

import math

from policies import ReplicaReading, ReplicaState, registry
from tests.fluid import FluidFleet, run
from tests.helpers import Feed, missing, ready, starting


def hybrid(**kw):
    return registry.create("hybrid", **kw)


def ramp(t: float) -> float:
    """4 req/s for 5 minutes, then a steady climb to 24 req/s over 20 minutes, then flat."""
    if t < 300:
        return 4.0
    return min(24.0, 4.0 + (t - 300) * 20 / 1200)


def ramp_fleet() -> FluidFleet:
    # 26 slots at 8 s per request: 3.25 req/s per replica at most, 1.2x the target's 2.67.
    return FluidFleet(ramp, cold_start_s=120, slots=26)


def test_orders_capacity_before_the_queue_builds_on_a_ramp():
    # Target 16 in flight at ~6 s each -> one replica per 2.67 req/s; a replica takes 120 s to start.
    trace = run(hybrid(default_service_time_s=8, target_concurrency=16), ramp_fleet(),
                until=1800, initial=2)
    max_waiting = max(s.total_waiting for _, s, _ in trace)
    assert max_waiting < 1.0, f"queue built up to {max_waiting:.1f}"
    # It ordered ahead: it asked for more than today's load needs. The fluid fleet holds
    # 6 s x rate requests in flight (Little's law), so today's need is ceil(6 x rate / 16).
    ahead = [(t, d) for t, s, d in trace if 300 < t < 1500 and d > math.ceil(ramp(t) * 6 / 16)]
    assert len(ahead) > 300, "rarely ordered capacity ahead of current demand"


def test_without_lead_time_the_same_ramp_queues():
    # The contrast that makes the test above meaningful: with no lead time (cold start
    # assumed 0) the same policy sizes for today's demand only, and a queue builds.
    trace = run(hybrid(default_service_time_s=8, target_concurrency=16, default_cold_start_s=0),
                ramp_fleet(), until=1800, initial=2)
    assert max(s.total_waiting for _, s, _ in trace) > 5


def test_a_reactive_hpa_lets_the_same_ramp_queue():
    trace = run(registry.create("hpa", max_replicas=50), ramp_fleet(), until=1800, initial=2)
    assert max(s.total_waiting for _, s, _ in trace) > 20


def test_holds_during_a_metric_outage_and_scales_down_after():
    p, feed = hybrid(scale_down_stabilization_s=60), Feed()
    busy = [ready(f"r{i}", 2, 16, finished=0) for i in range(6)]
    assert p.decide(feed(0, busy)).desired_replicas >= 6
    # Load vanishes but two replicas cannot be read: never scale down on that.
    for t in range(2, 400, 2):
        rs = [ready(f"r{i}", 0, 0, finished=0) for i in range(4)] + [missing("r4"), missing("r5")]
        d = p.decide(feed(t, rs, current=6))
        assert d.desired_replicas >= 6, (t, d)
    # Data comes back: now it may go down (stabilized and rate limited).
    downs = []
    for t in range(400, 800, 2):
        d = p.decide(feed(t, [ready(f"r{i}", 0, 0, finished=0) for i in range(6)], current=6))
        downs.append(d.desired_replicas)
    assert min(downs) < 6


def test_stale_data_holds():
    p, feed = hybrid(), Feed()
    s = feed(0, [ready("a", 50, 16)], current=1, data_age_s=120)
    d = p.decide(s)
    assert d.desired_replicas == 1 and "old" in d.reason


def test_backlog_term_sizes_to_drain_queue():
    p, feed = hybrid(target_concurrency=16, default_service_time_s=8, drain_target_s=30), Feed()
    # 120 waiting; one replica drains 16 / 8 = 2 req/s, 60 per 30 s -> 2 replicas' worth.
    d = p.decide(feed(0, [ready("a", 120, 16)]))
    assert d.terms["backlog_replicas"] == 2.0
    # 16 running on a target of 16 is one replica of demand; fractions are summed, then rounded.
    assert d.terms["demand_replicas"] == 1.0
    assert d.desired_replicas == 3


def test_a_one_request_blip_does_not_order_a_replica():
    p, feed = hybrid(target_concurrency=16, default_service_time_s=8), Feed()
    d = p.decide(feed(0, [ready("a", 1, 8)]))
    assert d.desired_replicas == 1


def test_starting_replicas_count_as_capacity_in_flight():
    p, feed = hybrid(default_service_time_s=8, target_concurrency=16), Feed()
    # Steady 10 req/s needs 5 replicas; once ordered, keeping them starting does not order more.
    fin = 0.0
    d = None
    for t in range(0, 40, 2):
        fin += 20
        rs = [ready("a", 0, 16, finished=fin)] + [starting(f"s{i}", 0) for i in range(4)]
        d = p.decide(feed(t, rs, current=5))
    assert d.desired_replicas == 5


def test_stuck_starting_replicas_stop_further_orders():
    p, feed = hybrid(stuck_starting_timeout_s=600), Feed()
    rs = [ready("a", 200, 16), starting("s1", started_at=0)]
    d = p.decide(feed(700, rs, current=2))
    assert d.desired_replicas == 2 and "stuck" in d.reason


def test_cold_start_is_learned_from_observed_starts():
    p, feed = hybrid(default_cold_start_s=300, cold_start_min_observations=3), Feed()
    names = ["a", "b", "c"]
    p.decide(feed(0, [starting(n, 0) for n in names]))
    rs = [ReplicaReading(n, ReplicaState.READY, 0.0, ready_at=60.0) for n in names]
    d = p.decide(feed(62, rs))
    assert d.terms["lead_time_s"] == 60.0 and d.terms["cold_start_learned"] == 1


def test_baseline_from_schedule_and_min():
    window = {"start_hour": 8, "end_hour": 18, "replicas": 4}
    p = hybrid(min_replicas=1, schedule=[window])
    nine_am = 9 * 3600.0  # 1970-01-01 09:00 UTC, a Thursday
    assert p.decide(Feed()(nine_am, [ready("a")])).desired_replicas == 4
    p = hybrid(min_replicas=1, schedule=[window])
    assert p.decide(Feed()(20 * 3600.0, [ready("a")])).desired_replicas == 1


def test_bad_parameter_names_the_field():
    import pytest

    from policies import PolicyConfigError

    with pytest.raises(PolicyConfigError, match="target_concurrency"):
        hybrid(target_concurrency=0)


def test_controller_stops_scale_up_while_replicas_are_stuck_starting():
    from policies import ScaleLimits
    from policies.control import Controller, OutageRules

    c = Controller(registry.create("static", replicas=5), ScaleLimits(max_replicas=10),
                   OutageRules(stuck_starting_s=600))
    out = c.step(1000.0, [ready("a", 0, 0), starting("s", started_at=100.0)], current_replicas=2)
    assert out.desired == 2 and "stuck" in out.guard
    out = c.step(1002.0, [ready("a", 0, 0), starting("s", started_at=900.0)], current_replicas=2)
    assert out.desired == 5 and out.guard is None
