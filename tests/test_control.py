"""The shared control step's outage rules and the removal order, on partial data."""

from __future__ import annotations

from dataclasses import dataclass

from policies import ReplicaState, ScaleLimits, registry
from policies.control import Controller, OutageRules
from policies.victims import removal_order
from tests.helpers import missing, ready


def _step_through_outage(policy_name: str, current: int, **params) -> list[int]:
    """Six replicas, one unreadable for 120 s while the rest are busy: what the step decides."""
    policy = registry.create(policy_name, min_replicas=1, max_replicas=10, **params)
    c = Controller(policy, ScaleLimits(min_replicas=1, max_replicas=10),
                   OutageRules(fallback_after_s=60, fallback_replicas=2))
    out = []
    for k, t in enumerate(range(0, 122, 2)):
        readings = [ready(f"r{i}", 8, 8, finished=20.0 * k) for i in range(current - 1)] + [missing("bad")]
        out.append(c.step(float(t), readings, current).desired)
    return out


def test_the_outage_fallback_never_shrinks_the_fleet():
    """At 94 s of a fault run the fleet went 6 -> 2 while the policy said "scale up": the fallback
    replaced the decision. It is a floor now: max(current, policy, fallback)."""
    for name in ("static", "hpa", "keda", "kpa", "hybrid"):
        desired = _step_through_outage(name, current=6)
        assert min(desired) >= 6, (name, desired)


def test_the_fallback_raises_a_fleet_below_it():
    desired = _step_through_outage("static", current=1, replicas=1)
    assert desired[0] == 1 and desired[-1] == 2  # held, then raised to the fallback after 60 s


def test_unreadable_replicas_are_removed_first():
    c = Controller(registry.create("static", replicas=2, min_replicas=1, max_replicas=10),
                   ScaleLimits(min_replicas=1, max_replicas=10), OutageRules(hold_on_incomplete=False))
    out = c.step(0.0, [ready("a"), ready("b"), missing("c"), ready("d")], 4)
    assert out.desired == 2 and out.remove_first == ("c",)

    @dataclass
    class R:
        name: str
        state: ReplicaState
        started_at: float
        ready_at: float | None

    fleet = [R("a", ReplicaState.READY, 0, 10), R("c", ReplicaState.READY, 0, 5),
             R("d", ReplicaState.READY, 0, 50), R("s", ReplicaState.STARTING, 60, None)]
    order = removal_order(fleet, lambda r: r.started_at, lambda r: r.name, out.remove_first)
    # The unreadable one goes first, then one not ready yet, then the most recently ready.
    assert [r.name for r in order] == ["c", "s", "d", "a"]


def test_a_kubernetes_pod_that_fails_readiness_after_being_ready_is_missing_data_not_a_start():
    """Overloaded vLLM pods often fail /health. Reported as STARTING they vanished from the data
    (not missing, no hold): with keda, 6 busy pods went 6 -> 4 when 5 of them turned not-ready.
    Now they stay READY; unreadable, the control step holds."""
    from autoscaler.kube.endpointslices import Endpoint
    from autoscaler.kube.pods import PodTracker

    tracker = PodTracker(8000)
    ok = [Endpoint(f"p{i}", f"10.0.0.{i}", True, True, False) for i in range(6)]
    tracker.pods(ok, 6, now=0.0)
    flaky = ok[:1] + [Endpoint(e.name, e.ip, False, False, False) for e in ok[1:]]
    pods = tracker.pods(flaky, 6, now=10.0)
    assert all(p.state is ReplicaState.READY for p in pods) and len(pods) == 6
    # And the control step holds when they cannot be read.
    policy = registry.create("keda", min_replicas=1, max_replicas=10)
    c = Controller(policy, ScaleLimits(min_replicas=1, max_replicas=10))
    readings = [ready("p0", 1, 1)] + [missing(p.name) for p in pods[1:]]
    assert c.step(30.0, readings, 6).desired >= 6
