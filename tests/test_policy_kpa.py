"""Knative KPA: stable/panic windows, no scale-down in panic, leaving panic, scale to zero."""

from policies import registry
from tests.helpers import Feed, ready


def kpa(**kw):
    # target 10 at 100 % utilization keeps the arithmetic readable.
    return registry.create("kpa", target=10, target_utilization=1.0, **kw)


def fleet(n: int, each: float):
    return [ready(f"r{i}", running=each) for i in range(n)]


def test_stable_mode_sizes_to_average_concurrency():
    p, feed = kpa(), Feed()
    d = None
    for t in range(0, 62, 2):
        d = p.decide(feed(t, fleet(2, 14)))  # 28 in flight over target 10 -> 3
    assert d.desired_replicas == 3 and d.terms["panicking"] == 0


def test_enters_panic_on_a_spike_and_never_scales_down_inside_it():
    p, feed = kpa(), Feed()
    for t in range(0, 60, 2):
        p.decide(feed(t, fleet(2, 10)))  # steady: 20 in flight, 2 pods
    # Spike: 60 in flight -> panic window wants 6, 6 / 2 ready >= 200 %: panic.
    d = None
    for t in range(60, 68, 2):
        d = p.decide(feed(t, fleet(2, 30)))
    assert d.terms["panicking"] == 1
    peak = d.desired_replicas
    assert peak >= 6
    # Load drops; still in panic (the stable window has not passed), so no scale-down.
    for t in range(68, 100, 2):
        d = p.decide(feed(t, fleet(peak, 1), current=peak))
        assert d.desired_replicas >= peak, t


def test_leaves_panic_after_a_stable_window_below_threshold():
    p, feed = kpa(), Feed()
    for t in range(0, 8, 2):
        p.decide(feed(t, fleet(1, 50)))
    assert p._panic_time is not None
    last_over = p._panic_time
    d = None
    t = 8
    while t <= last_over + 64:
        d = p.decide(feed(t, fleet(5, 2), current=5))
        t += 2
    assert d.terms["panicking"] == 0
    # Out of panic the stable window governs, bounded by max_scale_down_rate 2: floor(5 / 2) = 2.
    assert d.desired_replicas < 5


def test_scale_to_zero_waits_for_the_grace_period():
    p, feed = kpa(), Feed()
    p.decide(feed(0, fleet(1, 5)))
    # No traffic: the stable average reaches zero once the busy sample leaves the 60-s window.
    decisions = {t: p.decide(feed(t, fleet(1, 0), current=1)) for t in range(2, 130, 2)}
    zero_times = [t for t, d in decisions.items() if d.desired_replicas == 0]
    assert zero_times, "never scaled to zero"
    first_wanted = min(t for t, d in decisions.items() if "grace" in d.reason)
    assert min(zero_times) - first_wanted >= 30


def test_between_ticks_holds():
    p, feed = kpa(), Feed()
    p.decide(feed(0, fleet(1, 100)))
    assert "tick" in p.decide(feed(1, fleet(1, 100), current=1)).reason
