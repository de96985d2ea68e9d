"""Kubernetes API faults, driven through KubernetesBackend against the API double: 409, 429
with Retry-After, 500, 403, the API going down and coming back, and a real 410 on a watch.
Every test is bounded in time (the whole file runs in well under 30 s)."""

from __future__ import annotations

import asyncio
import time

import pytest

from autoscaler.backends.base import ScaleRefused
from autoscaler.kube.scale import ScaleFailed
from policies import ReplicaState
from tests.k8s_double import KubeDouble, kubernetes_backend, ready, wait_pods
from tests.servers import free_port

NS = "llm"
SCALE = ("apps", "deployments/scale")


@pytest.fixture
def kube():
    double = KubeDouble(cold_start_s=0.3, metrics_port=free_port())
    double.start()
    double.add_deployment(NS, "vllm", 2)
    yield double
    double.stop()


def run(coro, limit_s: float = 15.0):
    """Run a scenario, failing (not hanging) if it takes longer than `limit_s`."""
    return asyncio.run(asyncio.wait_for(coro, limit_s))


def scale_calls(double: KubeDouble) -> list[tuple[str, int]]:
    return [(c.verb, c.status) for c in double.requests if (c.group, c.resource) == SCALE]


async def timed(coro) -> float:
    started = time.monotonic()
    await coro
    return time.monotonic() - started


# --- writes --------------------------------------------------------------------------------


def test_conflict_rereads_and_writes_once(kube):
    kube.faults.scale_write_errors = [409]
    elapsed = run(timed(kubernetes_backend(kube).set_replicas(3, "test")))
    assert scale_calls(kube) == [("get", 200), ("update", 409), ("get", 200), ("update", 200)]
    assert [w["replicas"] for w in kube.scale_writes] == [3]
    assert elapsed < 1.0  # a conflict is retried at once, after the re-read


def test_a_long_retry_after_is_capped_and_the_write_then_succeeds(kube):
    """`Retry-After: 20` must not hold the tick for 20 s: the wait is capped at 2 s."""
    kube.faults.scale_write_errors = [429]
    kube.faults.retry_after = "20"
    elapsed = run(timed(kubernetes_backend(kube).set_replicas(3, "test")), limit_s=10)
    assert 1.9 <= elapsed < 3.5
    assert [w["replicas"] for w in kube.scale_writes] == [3]


def test_throttling_that_outlasts_the_budget_fails_fast_and_the_next_tick_retries(kube):
    kube.faults.scale_write_errors = [429] * 10
    kube.faults.retry_after = "20"
    b = kubernetes_backend(kube)  # budget 4 s, waits capped at 2 s

    async def scenario():
        started = time.monotonic()
        with pytest.raises(ScaleFailed) as err:
            await b.set_replicas(3, "test")
        elapsed = time.monotonic() - started
        kube.faults.scale_write_errors = []
        await b.set_replicas(3, "next tick")  # the next tick's call goes through
        return str(err.value), elapsed

    message, elapsed = run(scenario(), limit_s=10)
    assert elapsed < 4.5
    assert message.startswith("scale deployment llm/vllm to 3 failed after") and "429 TooManyRequests" in message
    assert "\n" not in message
    assert [w["replicas"] for w in kube.scale_writes] == [3]


def test_server_errors_are_retried_with_backoff(kube):
    kube.faults.scale_write_errors = [500, 500]
    elapsed = run(timed(kubernetes_backend(kube).set_replicas(5, "test")))
    assert [v for v, s in scale_calls(kube) if v == "update"] == ["update"] * 3
    assert [s for v, s in scale_calls(kube) if v == "update"] == [500, 500, 200]
    assert 0.3 <= elapsed < 2.0  # 0.1 s then 0.2 s of backoff
    assert [w["replicas"] for w in kube.scale_writes] == [5]


def test_forbidden_is_a_refusal_not_retried(kube):
    kube.faults.scale_write_errors = [403]
    with pytest.raises(ScaleRefused, match="forbidden"):
        run(kubernetes_backend(kube).set_replicas(5, "test"))
    assert [v for v, _ in scale_calls(kube)] == ["get", "update"]


# --- the API goes down, then comes back ------------------------------------------------------


def test_api_down_fails_after_bounded_attempts(kube):
    """The owner check has an answer already; then the API goes down. The write path itself
    must retry (4 attempts), give up within its budget with one clear line, and write nothing."""
    b = kubernetes_backend(kube)

    async def scenario():
        await b.set_replicas(3, "before")  # the owner check is now answered (cached)
        kube.requests.clear()
        kube.faults.api_down = True
        started = time.monotonic()
        with pytest.raises(ScaleFailed) as err:
            await b.set_replicas(5, "test")
        return str(err.value), time.monotonic() - started

    message, elapsed = run(scenario())
    assert scale_calls(kube) == [("get", 503)] * 4  # the attempts happened, each re-reading first
    assert message.startswith("scale deployment llm/vllm to 5 failed after 4 attempts in")
    assert "503 ServiceUnavailable" in message and "\n" not in message
    assert elapsed < 4.5  # waits 0.1 + 0.2 + 0.4 s, within the 4 s budget
    assert [w["replicas"] for w in kube.scale_writes] == [3]


def test_current_replicas_fails_with_one_line_when_the_api_is_down(kube):
    kube.faults.api_down = True
    with pytest.raises(ScaleFailed, match=r"^cannot read the scale of deployment llm/vllm: 503 ServiceUnavailable"):
        run(kubernetes_backend(kube).current_replicas())


def test_pods_keep_the_last_known_state_while_the_api_is_down_and_the_watch_recovers(kube):
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        try:
            before = await wait_pods(b, lambda p: ready(p) == 2)
            kube.faults.api_down = True
            deadline = time.monotonic() + 5
            while b.watch.errors < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            during = await b.pods()
            assert b.watch.errors >= 2 and b.watch.alive
            kube.faults.api_down = False
            await b.set_replicas(3, "back")
            after = await wait_pods(b, lambda p: ready(p) == 3, 5)
            return before, during, after, b.watch.relists
        finally:
            await b.close()

    before, during, after, relists = run(scenario())
    assert during == before  # same pods, states and times: nothing forgotten during the outage
    assert ready(after) == 3
    assert relists == 1  # it resumed the watch from its resourceVersion: no re-list needed


# --- a real 410 on the watch -----------------------------------------------------------------


def test_watch_410_relists_and_keeps_state(kube):
    """The history the watch would resume from is compacted away while the client is not
    looking: the resumed watch gets 200 + ERROR 410 Expired; the backend must re-list."""
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        try:
            before = {p.name: p for p in await wait_pods(b, lambda p: ready(p) == 2)}

            def expire():  # one step on the double's loop: no event reaches the client
                d = kube.deployments[(NS, "vllm")]
                d.replicas = 1
                kube._reconcile(d)
                kube.compact()
                kube.end_watches()

            kube.call(expire)
            after = await wait_pods(b, lambda p: [x.state for x in p].count(ReplicaState.READY) == 1, 5)
            return before, {p.name: p for p in after}, b.watch.expired, b.watch.relists
        finally:
            await b.close()

    before, after, expired, relists = run(scenario())
    assert kube.expired_watches == 1 and expired == 1
    assert relists == 2  # the first LIST, and the one after the 410
    verbs = [c.verb for c in kube.requests if c.resource == "endpointslices"]
    assert verbs[:2] == ["list", "watch"] and verbs[2:5] == ["watch", "list", "watch"]
    survivors = [n for n, p in after.items() if p.state is ReplicaState.READY]
    assert len(survivors) == 1 and after[survivors[0]].started_at == before[survivors[0]].started_at
    assert after[survivors[0]].ready_at == before[survivors[0]].ready_at  # state kept across the re-list


# --- leader election while the API is down ----------------------------------------------------


def test_a_leader_that_cannot_renew_steps_down_before_anyone_may_take_over(kube):
    from autoscaler.kube.client import api_client
    from autoscaler.leader import LeaseElector, _epoch

    async def scenario():
        elector = LeaseElector(api_client(f"http://127.0.0.1:{kube.port}"), NS, "qscale", "a", duration_s=3)
        task = asyncio.ensure_future(elector.run())
        try:
            while not elector.is_leader():
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.2)  # renewed at least once
            kube.faults.api_down = True
            while elector.is_leader():
                await asyncio.sleep(0.02)
            # The last renewal that landed (one in flight when the API went down may still have).
            return _epoch(kube.leases[(NS, "qscale")]["spec"]["renewTime"]), time.time()
        finally:
            elector.stop()
            await task

    renewed, stepped_down = run(scenario(), limit_s=10)
    # Another instance may take over at renewTime + 3 s; this one gave up a second earlier.
    assert stepped_down <= renewed + 3 - 0.8, stepped_down - renewed
