"""Invariants of every policy over random signal sequences (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import ReplicaState, ScaleLimits, Signals, SignalsBuilder, registry
from policies.control import Controller
from tests.helpers import reading

BOUNDS = {"min_replicas": 1, "max_replicas": 8}
BOUNDS_ZERO = {"min_replicas": 0, "max_replicas": 8}
POLICIES = {
    "static": {**BOUNDS, "replicas": 3},
    "hpa": BOUNDS,
    "keda": BOUNDS_ZERO,
    "kpa": BOUNDS_ZERO,
    "hybrid": {**BOUNDS, "scale_down_stabilization_s": 20, "default_cold_start_s": 30},
}

replica = st.tuples(
    st.sampled_from(list(ReplicaState)),
    st.floats(0, 200),  # waiting
    st.floats(0, 64),  # running
    st.booleans(),  # scraped
    st.floats(0, 50),  # finished-counter increment (a reset when negative draws happen below)
    st.integers(0, 20),  # started-at offset
)
step = st.tuples(
    st.floats(0.5, 40),  # dt
    st.lists(replica, max_size=8),
    st.integers(0, 8),  # current replicas (as the scaler last wrote them)
    st.sampled_from([0.0, 0.0, 0.0, 5.0, 120.0]),  # data age
    st.floats(0, 20),  # router waiting
)
sequences = st.lists(step, min_size=1, max_size=40)


def build_readings(seq):
    """(time, readings, current, data age, router waiting) per step."""
    t = 1_000.0
    counters: dict[int, float] = {}
    for dt, reps, current, age, router in seq:
        t += dt
        readings = []
        for i, (state, waiting, running, scraped, inc, offset) in enumerate(reps):
            counters[i] = counters.get(i, 0.0) + inc
            readings.append(reading(
                f"r{i}", state, started_at=t - offset * 10, scraped=scraped, waiting=waiting,
                running=running, requests_finished=counters[i]))
        yield t, readings, current, age, router


def build_signals(seq) -> list[Signals]:
    builder = SignalsBuilder()
    return [builder.build(t, readings, current, data_age_s=age, router_waiting=router)
            for t, readings, current, age, router in build_readings(seq)]


def decisions(name: str, signals: list[Signals]):
    policy = registry.create(name, **POLICIES[name])
    return [policy.decide(s) for s in signals]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=sequences, name=st.sampled_from(sorted(POLICIES)))
def test_desired_within_bounds(seq, name):
    lo, hi = POLICIES[name]["min_replicas"], POLICIES[name]["max_replicas"]
    for s, d in zip(build_signals(seq), decisions(name, build_signals(seq)), strict=True):
        if lo <= s.current_replicas <= hi:
            assert lo <= d.desired_replicas <= hi, (name, s.current_replicas, d)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=sequences, name=st.sampled_from(sorted(POLICIES)))
def test_same_signals_same_decisions(seq, name):
    first = decisions(name, build_signals(seq))
    second = decisions(name, build_signals(seq))
    assert first == second


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=sequences, name=st.sampled_from(sorted(POLICIES)))
def test_the_control_step_never_scales_down_on_incomplete_or_stale_data(seq, name):
    # The shared control step owns this guard for every policy (no policy repeats it).
    limits = ScaleLimits(min_replicas=0, max_replicas=8)
    controller = Controller(registry.create(name, **POLICIES[name]), limits)
    for t, readings, current, age, router in build_readings(seq):
        out = controller.step(t, readings, current, data_age_s=age, router_waiting=router)
        s = out.signals
        if (not s.complete or s.data_age_s > 30) and current <= limits.max_replicas:
            assert out.desired >= current, (name, s, out)


def test_non_finite_signals_never_poison_a_policy_for_good():
    """Signals carrying NaN or Inf (built by hand, past the builder that normally refuses them) may
    give one odd decision, never a broken state: afterwards every decision is finite again. (The
    hybrid's demand windows once turned NaN for good after one +Inf reading.)"""
    import contextlib
    import dataclasses
    import math

    from tests.helpers import Feed, ready

    for name in registry.names():
        policy = registry.create(name, min_replicas=1, max_replicas=20)
        feed = Feed()
        finished = 0.0
        for t in range(0, 600, 2):
            finished += 10
            s = feed(float(t), [ready("a", 2, 4, finished=finished, generation_tokens=finished * 100,
                                      prompt_tokens=finished * 500, ttft_count=finished)], current=2)
            if 100 <= t < 130:
                s = dataclasses.replace(s, arrival_rate=float("inf") if t % 4 else float("nan"),
                                        total_waiting=float("inf"), generation_tokens_per_s=float("nan"),
                                        mean_kv_cache_usage=float("nan"))
                with contextlib.suppress(ArithmeticError, ValueError):  # the loop counts a failed tick
                    policy.decide(s)
                continue
            d = policy.decide(s)
            if t >= 200:
                assert 1 <= d.desired_replicas <= 20, (name, t, d)
                bad = {k: v for k, v in d.terms.items() if not math.isfinite(v)}
                assert not bad, (name, t, bad)
