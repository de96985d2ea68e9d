"""KEDA: activation at the threshold, cooldown to zero, HPA on the fleet sum."""

from policies import registry
from tests.helpers import Feed, ready


def keda(**kw):
    return registry.create("keda", **kw)


def test_activation_needs_metric_above_threshold():
    p, feed = keda(activation_threshold=2), Feed()
    # Exactly at the threshold is not active (KEDA: value > activationThreshold).
    d = p.decide(feed(0, [], current=0))
    assert d.desired_replicas == 0
    p2 = keda(activation_threshold=2)
    feed2 = Feed()
    # The activator/gateway queue is what a scaler sees when no replica exists.
    s = feed2.builder.build(0, [], 0, router_waiting=3)
    assert p2.decide(s).desired_replicas == 1
    s = Feed().builder.build(0, [], 0, router_waiting=2)
    assert keda(activation_threshold=2).decide(s).desired_replicas == 0


def test_polling_interval_gates_activation():
    p = keda()
    b = Feed().builder
    assert p.decide(b.build(0, [], 0)).desired_replicas == 0
    # Demand arrives at t=5, but the next poll is at t=30.
    assert p.decide(b.build(5, [], 0, router_waiting=4)).desired_replicas == 0
    assert p.decide(b.build(30, [], 0, router_waiting=4)).desired_replicas == 1


def test_hpa_scales_on_fleet_sum_over_target():
    p, feed = keda(), Feed()
    # 23 waiting in the fleet, target 5 per replica -> ceil(23 / 5) = 5 (within 1 + 4 pods).
    d = p.decide(feed(0, [ready("a", 23)]))
    assert d.desired_replicas == 5


def test_cooldown_before_zero():
    p, feed = keda(), Feed()
    assert p.decide(feed(0, [ready("a", 1)])).desired_replicas == 1  # active
    idle = [ready("a", 0)]
    for t in range(30, 300, 30):
        assert p.decide(feed(t, idle)).desired_replicas == 1, t
    d = p.decide(feed(300, idle))
    assert d.desired_replicas == 0 and "cooldown" in d.reason


def test_min_replica_count_above_zero_never_goes_to_zero():
    p, feed = keda(min_replicas=2), Feed()
    for t in range(0, 900, 15):
        d = p.decide(feed(t, [ready("a", 0), ready("b", 0)]))
        assert d.desired_replicas == 2
