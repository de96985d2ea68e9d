"""The HPA port against hand-computed cases from the upstream algorithm."""

from policies import registry
from policies.hpa import replicas_for_pods_metric
from tests.helpers import Feed, missing, ready, signals, starting


def hpa(**kw):
    return registry.create("hpa", **kw)


def test_ceil_of_average_over_target():
    # avg waiting (10 + 12) / 2 = 11 -> ratio 2.2 -> ceil(2.2 * 2) = 5
    d = hpa().decide(signals(0, [ready("a", 10), ready("b", 12)]))
    assert d.desired_replicas == 5
    assert d.terms["usage_ratio"] == 2.2


def test_within_tolerance_keeps_current():
    # avg 5.4 on target 5 is a ratio of 1.08: inside the 10 % tolerance.
    d = hpa().decide(signals(0, [ready("a", 5), ready("b", 5.8)]))
    assert d.desired_replicas == 2
    # avg 5.6 is a ratio of 1.12: outside, ceil(1.12 * 2) = 3.
    d = hpa().decide(signals(0, [ready("a", 5.4), ready("b", 5.8)]))
    assert d.desired_replicas == 3


def test_scale_up_rate_limit_default_behavior():
    # One pod at 100 waiting wants 20; default up policies allow max(1 * 2, 1 + 4) = 5 per 15 s.
    p = hpa(max_replicas=50)
    feed = Feed()
    assert p.decide(feed(0, [ready("a", 100)])).desired_replicas == 5
    # 15 s later from 5 pods (all starting): the period has rolled, max(10, 9) = 10.
    rs = [ready("a", 100)] + [starting(f"s{i}", 0) for i in range(4)]
    d = p.decide(feed(15, rs, current=5))
    assert d.desired_replicas == 10


def test_sync_period_holds_between_syncs():
    p, feed = hpa(), Feed()
    assert p.decide(feed(0, [ready("a", 100)])).desired_replicas == 5
    assert p.decide(feed(10, [ready("a", 100)], current=1)).desired_replicas == 1
    assert "sync" in p.decide(feed(14.9, [ready("a", 100)], current=1)).reason


def test_scale_down_waits_for_the_stabilization_window():
    p, feed = hpa(), Feed()
    four = [ready(n, 5) for n in "abcd"]
    assert p.decide(feed(0, four)).desired_replicas == 4
    idle = [ready(n, 0) for n in "abcd"]
    for t in range(15, 300, 15):
        assert p.decide(feed(t, idle)).desired_replicas == 4, t
    # The initial recommendation (4, t=0) leaves the 300-s window after t=300; the rest say 1.
    assert p.decide(feed(315, idle)).desired_replicas == 1


def test_scale_down_rate_limit_percent():
    p = hpa(scale_down={"stabilization_window_s": 0, "policies": [
        {"type": "Percent", "value": 50, "period_s": 60}]})
    feed = Feed()
    idle = [ready(n, 0) for n in "abcdefgh"]
    assert p.decide(feed(0, idle)).desired_replicas == 4  # int(8 * 0.5)
    # Within the same period the start count is 8 again: int(8 * 0.5) = 4, no further.
    assert p.decide(feed(15, idle[:4], current=4)).desired_replicas == 4


def test_missing_pods_assumed_at_target_on_scale_down():
    rs = (ready("a", 0), ready("b", 0), missing("c"), missing("d"))
    s = signals(0, list(rs))
    metric_replicas, terms = replicas_for_pods_metric(s.replicas, "waiting", 5, 0.1, 4)
    # Ratio 0 on the two readable pods; with the two missing at target it is 0.5: ceil(0.5 * 4) = 2.
    assert terms["usage_ratio"] == 0 and terms["usage_ratio_with_assumptions"] == 0.5
    assert metric_replicas == 2


def test_unready_pods_assumed_zero_on_scale_up():
    # One ready pod at 20 (ratio 4) and three pending: (20 + 0 + 0 + 0) / 4 / 5 = 1.0 -> hold.
    s = signals(0, [ready("a", 20)] + [starting(f"s{i}") for i in range(3)])
    metric_replicas, _ = replicas_for_pods_metric(s.replicas, "waiting", 5, 0.1, 4)
    assert metric_replicas == 4


def test_no_metrics_holds():
    d = hpa().decide(signals(0, [missing("a"), missing("b")]))
    assert d.desired_replicas == 2 and "no valid metrics" in d.reason


def test_zero_replicas_disables_scaling():
    d = hpa().decide(signals(0, [], current=0))
    assert d.desired_replicas == 0 and "disabled" in d.reason
