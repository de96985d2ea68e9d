"""The Kubernetes backend against the API double, driven by the official client.

Faults (409, 429, 500, API down, watch 410) are in tests/test_faults_kubernetes.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from autoscaler.backends.base import ScaleRefused
from autoscaler.backends.kubernetes import KubernetesTarget
from autoscaler.kube.client import api_client
from autoscaler.kube.deletion_cost import DELETION_COST
from autoscaler.kube.endpointslices import Endpoint
from autoscaler.kube.pods import PodTracker
from autoscaler.leader import LeaseElector
from autoscaler.loop import TargetLoop
from autoscaler.metrics.scrape import ScrapeSource
from autoscaler.telemetry import Telemetry
from policies import ReplicaState, ScaleLimits, registry
from policies.control import OutageRules
from tests.k8s_double import KubeDouble, kubernetes_backend, ready, wait_pods
from tests.servers import free_port

NS = "llm"


@pytest.fixture
def kube():
    double = KubeDouble(cold_start_s=0.3, metrics_port=free_port())
    double.start()
    double.add_deployment(NS, "vllm", 2)
    yield double
    double.stop()


def run(coro):
    return asyncio.run(coro)


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("namespace", "%2e%2e%2f"), ("namespace", "../x"), ("namespace", "LLM"), ("namespace", "a" * 64),
    ("namespace", "-llm"), ("deployment", "../x"), ("deployment", "a/b"), ("deployment", "vllm."),
    ("service", "1vllm"), ("service", "%2e%2e"), ("metrics_path", "metrics"),
])
def test_target_names_must_be_valid_kubernetes_names(field, value):
    with pytest.raises(ValidationError) as err:
        KubernetesTarget(**{"deployment": "vllm", field: value})
    (problem,) = err.value.errors()
    assert problem["loc"] == (field,) and value[:20] in problem["msg"] and "\n" not in problem["msg"]


def test_valid_target_names_are_kept():
    t = KubernetesTarget(namespace="llm-prod", deployment="vllm.llama-3", service="vllm", metrics_path="/m")
    assert (t.namespace, t.deployment, t.service) == ("llm-prod", "vllm.llama-3", "vllm")


# --- scaling -----------------------------------------------------------------------------


def test_scale_read_and_write_through_the_subresource(kube):
    async def scenario():
        b = kubernetes_backend(kube)
        assert await b.current_replicas() == 2
        await b.set_replicas(4, "test")
        assert await b.current_replicas() == 4
        # At 0 the API omits spec.replicas entirely; the client reads None, we read 0.
        await b.set_replicas(0, "test")
        assert await b.current_replicas() == 0
        assert b.router_waiting() == 0.0

    run(scenario())
    assert [w["method"] for w in kube.scale_writes] == ["PUT", "PUT"]
    scaled = [e for e in kube.events if e["reason"] == "Scaled"]
    assert "from 2 to 4" in scaled[0]["message"] and "from 4 to 0" in scaled[1]["message"]


def test_writing_the_current_count_is_a_no_op(kube):
    run(kubernetes_backend(kube).set_replicas(2, "test"))
    assert kube.scale_writes == [] and kube.events == []


def test_refuses_when_an_hpa_owns_the_deployment(kube):
    kube.hpas = [{"metadata": {"name": "vllm-hpa", "namespace": NS},
                  "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"},
                           "minReplicas": 1, "maxReplicas": 10}}]
    b = kubernetes_backend(kube)
    with pytest.raises(ScaleRefused, match="HorizontalPodAutoscaler/vllm-hpa also targets deployment llm/vllm"):
        run(b.set_replicas(5, "test"))
    with pytest.raises(ScaleRefused):
        run(b.set_replicas(5, "test"))
    assert kube.scale_writes == []
    refusals = [e for e in kube.events if e["reason"] == "ScaleRefused"]
    assert len(refusals) == 1 and refusals[0]["type"] == "Warning"  # reported once, not every tick
    # Told otherwise, it acts.
    b.target = b.target.model_copy(update={"allow_other_owners": True})
    run(b.set_replicas(5, "test"))
    assert len(kube.scale_writes) == 1


def test_refuses_when_a_keda_scaledobject_targets_it(kube):
    kube.scaled_objects = [{"metadata": {"name": "vllm-so"}, "spec": {"scaleTargetRef": {"name": "vllm"}}}]
    with pytest.raises(ScaleRefused, match="ScaledObject/vllm-so"):
        run(kubernetes_backend(kube).set_replicas(5, "test"))


def test_a_write_whose_answer_times_out_is_not_written_twice(kube):
    kube.faults.scale_write_delay_s = 2.0  # the write lands, but after the client gave up
    b = kubernetes_backend(kube, request_timeout_s=1.0)
    run(b.set_replicas(4, "test"))
    assert [w["replicas"] for w in kube.scale_writes] == [4]
    assert run(b.current_replicas()) == 4
    assert "from 2 to 4" in kube.events[-1]["message"]


# --- discovery ---------------------------------------------------------------------------


def test_endpointslice_watch_tracks_pods_through_cold_start(kube):
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        try:
            assert ready(await wait_pods(b, lambda p: ready(p) == 2)) == 2
            await b.set_replicas(3, "test")
            # The new pod shows up starting (in the slice, not ready), then ready.
            pods = await wait_pods(b, lambda p: any(x.state is ReplicaState.STARTING for x in p), 5)
            assert any(p.state is ReplicaState.STARTING and p.metrics_url is None for p in pods)
            pods = await wait_pods(b, lambda p: ready(p) == 3)
            assert ready(pods) == 3 and all(p.metrics_url.startswith("http://127.0.0.") for p in pods)
            assert all(p.ready_at is not None and p.ready_at >= p.started_at for p in pods)
            return b.watch.relists
        finally:
            await b.close()
            assert not b.watch.alive

    assert run(scenario()) == 1  # one LIST, then the watch


def test_a_watch_stream_that_ends_is_resumed_without_listing_again(kube):
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        try:
            await wait_pods(b, lambda p: ready(p) == 2)
            for _ in range(3):
                kube.call(kube.end_watches)  # as the server does after timeoutSeconds
                await asyncio.sleep(0.2)
            await b.set_replicas(3, "test")
            pods = await wait_pods(b, lambda p: ready(p) == 3)
            return ready(pods), b.watch.relists, b.watch.errors
        finally:
            await b.close()

    assert run(scenario()) == (3, 1, 0)
    watches = [c for c in kube.requests if c.verb == "watch"]
    assert len(watches) >= 4


def test_close_stops_the_watch_thread_at_once(kube):
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        await asyncio.sleep(0.3)  # the watch is open and idle
        started = time.monotonic()
        await b.close()
        return time.monotonic() - started, b.watch.alive

    elapsed, alive = run(scenario())
    assert not alive and elapsed < 1.0  # not the watch's 5 s timeout


# --- pending pods: placeholders -----------------------------------------------------------


def ep(name: str, ready_: bool = True, terminating: bool = False) -> Endpoint:
    return Endpoint(name, "10.0.0.1", ready_ and not terminating, ready_, terminating)


def test_a_new_pending_pod_gets_its_own_time_not_an_old_placeholder_time():
    t = PodTracker(8000)
    assert [(p.name, p.started_at) for p in t.pods([ep("a")], 2, now=100.0)] == [("a", 100.0), ("pending-0", 100.0)]
    t.pods([ep("a"), ep("b", ready_=False)], 2, now=160.0)  # the pending pod got its IP
    # Much later a new pod is pending: its placeholder starts now, so the stuck guard
    # (started_at older than stuck_pending_s) cannot trip on it.
    pods = t.pods([ep("a"), ep("b")], 3, now=1000.0)
    assert [(p.name, p.started_at) for p in pods if p.name.startswith("pending")] == [("pending-0", 1000.0)]


def test_a_placeholder_hands_its_time_to_the_pod_that_appears_and_the_oldest_goes_first():
    t = PodTracker(8000)
    t.pods([], 1, now=10.0)
    t.pods([], 2, now=20.0)
    pods = {p.name: p for p in t.pods([ep("x", ready_=False)], 2, now=50.0)}
    assert pods["x"].started_at == 10.0 and pods["x"].state is ReplicaState.STARTING
    assert pods["pending-0"].started_at == 20.0
    pods = {p.name: p for p in t.pods([ep("x"), ep("y", ready_=False)], 2, now=70.0)}
    assert pods["y"].started_at == 20.0 and pods["x"].ready_at == 70.0 and "pending-0" not in pods


def test_draining_pods_are_not_live_and_keep_a_url_while_serving():
    t = PodTracker(8000, "/metrics")
    pods = {p.name: p for p in t.pods([ep("a", terminating=True), ep("b")], 2, now=1.0)}
    assert pods["a"].state is ReplicaState.DRAINING and pods["a"].metrics_url == "http://10.0.0.1:8000/metrics"
    assert pods["pending-0"].state is ReplicaState.STARTING  # 2 exist, 1 live endpoint


def test_no_placeholders_after_a_scale_down(kube):
    """The PUT's answer still carries the old status.replicas: pods beyond the new spec are
    leaving, so they must not show up as starting."""
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        try:
            await b.set_replicas(3, "up")
            await wait_pods(b, lambda p: ready(p) == 3)
            await b.current_replicas()
            await b.set_replicas(1, "down")
            return [p.name for p in await b.pods() if p.state is ReplicaState.STARTING]
        finally:
            await b.close()

    assert run(scenario()) == []


# --- scale-down: which pods go ------------------------------------------------------------


def test_remove_first_sets_the_deletion_cost_so_those_pods_go(kube):
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        try:
            await b.set_replicas(4, "up")
            pods = await wait_pods(b, lambda p: ready(p) == 4)
            names = sorted(p.name for p in pods)
            # The oldest pod would stay (a ReplicaSet removes the newest first); ask for it.
            await b.set_replicas(2, "down", remove_first=["pending-9", names[0], "not-a-pod", names[0], names[1]])
            left = await wait_pods(b, lambda p: len([x for x in p if x.state is not ReplicaState.DRAINING]) == 2)
            return names, sorted(p.name for p in left if p.state is not ReplicaState.DRAINING)
        finally:
            await b.close()

    names, left = run(scenario())
    assert left == names[2:]
    patches = [c for c in kube.requests if c.verb == "patch"]
    assert [(c.resource, c.name) for c in patches] == [("pods", names[0]), ("pods", names[1])]
    d = kube.deployments[(NS, "vllm")]
    assert all(DELETION_COST not in p.annotations for p in d.pods if not p.terminating)


def test_remove_first_is_ignored_on_a_scale_up(kube):
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        try:
            pods = await wait_pods(b, lambda p: ready(p) == 2)
            await b.set_replicas(3, "up", remove_first=[pods[0].name])
        finally:
            await b.close()

    run(scenario())
    assert not [c for c in kube.requests if c.verb == "patch"]


# --- with the loop and leader election ------------------------------------------------------


def test_loop_holds_when_a_pod_returns_garbage_and_scrapes_the_rest(kube):
    async def scenario():
        b = kubernetes_backend(kube)
        await b.start()
        pods = await wait_pods(b, lambda p: ready(p) == 2)
        kube.faults.metrics_garbage_pods.add(pods[0].name)
        kube.faults.metrics_timeout_pods.add(pods[1].name)
        policy = registry.create("static", replicas=1)  # wants fewer: must not happen on bad data
        loop = TargetLoop("vllm", policy, ScaleLimits(max_replicas=5), OutageRules(), b,
                          ScrapeSource("vllm", timeout_s=0.5), Telemetry())
        try:
            started = time.monotonic()
            last = await loop.tick()
            return last, time.monotonic() - started
        finally:
            await loop.close()

    last, elapsed = run(scenario())
    assert elapsed < 3  # the hung pod did not block the tick
    assert sorted(e.split(":")[0] for e in last.scrape_errors.values()) == ["timeout", "unparseable"]
    assert len(last.missing) == 2 and last.desired == 2 and not last.applied
    assert "hold" in (last.guard or "")
    assert kube.scale_writes == []


def test_leader_election_exactly_one_writes_and_fails_over(kube):
    api = api_client(f"http://127.0.0.1:{kube.port}")

    async def scenario():
        a = LeaseElector(api, NS, "qscale", "a", duration_s=3)
        b = LeaseElector(api, NS, "qscale", "b", duration_s=3)
        ta, tb = asyncio.ensure_future(a.run()), asyncio.ensure_future(b.run())
        await asyncio.sleep(1.5)
        leaders = [e.identity for e in (a, b) if e.is_leader()]
        assert len(leaders) == 1, leaders
        first = a if a.is_leader() else b
        other = b if first is a else a
        # Both keep checking for a while: still exactly one.
        for _ in range(10):
            await asyncio.sleep(0.2)
            assert a.is_leader() != b.is_leader()
        first.stop()
        await (ta if first is a else tb)
        # The standby takes over within the lease duration (+ one renew period).
        deadline = time.monotonic() + 3 + 1.5
        while time.monotonic() < deadline and not other.is_leader():
            await asyncio.sleep(0.1)
        assert other.is_leader()
        lease = kube.leases[(NS, "qscale")]
        assert lease["spec"]["holderIdentity"] == other.identity
        assert lease["spec"]["leaseTransitions"] == 1
        other.stop()
        await (tb if first is a else ta)

    run(scenario())


def test_two_autoscaler_processes_only_the_leader_writes(kube, tmp_path):
    """`qscale run` twice with leader election against the double: one writes, the other
    decides (its windows stay warm) but never writes; when the leader stops, the other takes over."""
    import json
    import textwrap

    from tests.servers import http_get, qscale_process, wait_http

    double = kube
    ports = [free_port(), free_port()]

    def config(i: int) -> str:
        path = tmp_path / f"q{i}.yaml"
        path.write_text(textwrap.dedent(f"""
            listen: 127.0.0.1:{ports[i]}
            tick_s: 1
            leader_election: true
            lease_namespace: {NS}
            lease_duration_s: 3
            identity: inst-{i}
            targets:
              - name: vllm
                backend: kubernetes
                kubernetes: {{namespace: {NS}, deployment: vllm, metrics_port: {double.metrics_port},
                              api_url: "http://127.0.0.1:{double.port}"}}
                model_name: vllm
                policy: static
                params: {{replicas: 3, max_replicas: 5}}
                limits: {{max_replicas: 5}}
        """))
        return str(path)

    with qscale_process("run", "--config", config(0)) as a, qscale_process("run", "--config", config(1)) as b:
        for port, proc in zip(ports, (a, b), strict=True):
            wait_http(f"http://127.0.0.1:{port}/readyz", 30, proc)
        assert wait_for(lambda: double.deployments[(NS, "vllm")].replicas == 3, 15)
        states = [json.loads(http_get(f"http://127.0.0.1:{p}/api/v1/targets")[1]) for p in ports]
        assert sorted(s["leader"] for s in states) == [False, True]
        assert len(double.scale_writes) == 1  # one decision, one write, by the leader only
        leader = 0 if states[0]["leader"] else 1
        follower_port = ports[1 - leader]
        # The follower decided too (warm windows) without writing.
        assert states[1 - leader]["targets"]["vllm"]["desired"] == 3
        # Stop the leader; the follower takes over within the lease and acts on a new decision.
        (a, b)[leader].terminate()
        (a, b)[leader].wait(20)
        assert wait_for(lambda: json.loads(http_get(f"http://127.0.0.1:{follower_port}/api/v1/targets")[1])["leader"], 10)
        double.call(lambda: setattr(double.deployments[(NS, "vllm")], "replicas", 1))
        assert wait_for(lambda: double.deployments[(NS, "vllm")].replicas == 3, 15)
        assert len(double.scale_writes) == 2
