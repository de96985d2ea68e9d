"""The Kubernetes backend against the API double, driven by the official client."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes.client.exceptions import ApiException

from autoscaler.discovery.kubernetes import EndpointSliceDiscovery
from autoscaler.kube import api_client
from autoscaler.leader import LeaseElector
from autoscaler.loop import TargetLoop
from autoscaler.metrics.scrape import ScrapeSource
from autoscaler.scalers.base import ScaleRefused
from autoscaler.scalers.kubernetes import KubernetesScaler
from autoscaler.telemetry import Telemetry
from policies import ReplicaState, ScaleLimits, registry
from policies.control import OutageRules
from tests.k8s_double import KubeDouble
from tests.servers import free_port

NS = "llm"


@pytest.fixture
def kube():
    double = KubeDouble(cold_start_s=0.5, metrics_port=free_port())
    url = double.start()
    double.add_deployment(NS, "vllm", 2)
    yield double, api_client(url)
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


def test_scale_read_and_write_through_the_subresource(kube):
    double, api = kube
    scaler = KubernetesScaler(api, NS, "vllm")
    assert run(scaler.current_replicas()) == 2
    run(scaler.set_replicas(4, "test"))
    assert run(scaler.current_replicas()) == 4
    assert [w["method"] for w in double.scale_writes] == ["PUT"]
    assert double.events[-1]["reason"] == "Scaled" and "from 2 to 4" in double.events[-1]["message"]
    # At 0 the API omits spec.replicas entirely; the client reads None, we read 0.
    run(scaler.set_replicas(0, "test"))
    assert run(scaler.current_replicas()) == 0


def test_conflict_is_retried_and_writes_once(kube):
    double, api = kube
    double.faults.scale_write_errors = [409]
    run(KubernetesScaler(api, NS, "vllm").set_replicas(3, "test"))
    assert len(double.scale_writes) == 1 and double.scale_writes[0]["replicas"] == 3


def test_throttling_and_server_errors_back_off_and_retry(kube):
    double, api = kube
    double.faults.scale_write_errors = [429, 500]
    started = time.monotonic()
    run(KubernetesScaler(api, NS, "vllm").set_replicas(5, "test"))
    assert time.monotonic() - started >= 3.0  # 1 s then 2 s of backoff
    assert len(double.scale_writes) == 1


def test_api_down_fails_after_bounded_attempts(kube):
    double, api = kube
    double.faults.api_down = True
    with pytest.raises((RuntimeError, ApiException)):
        run(KubernetesScaler(api, NS, "vllm", attempts=2).set_replicas(5, "test"))
    assert double.scale_writes == []


def test_refuses_when_an_hpa_owns_the_deployment(kube):
    double, api = kube
    double.hpas = [{"metadata": {"name": "vllm-hpa", "namespace": NS},
                    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"},
                             "minReplicas": 1, "maxReplicas": 10}}]
    with pytest.raises(ScaleRefused, match="HorizontalPodAutoscaler/vllm-hpa"):
        run(KubernetesScaler(api, NS, "vllm").set_replicas(5, "test"))
    assert double.scale_writes == []
    assert double.events[-1]["reason"] == "ScaleRefused" and double.events[-1]["type"] == "Warning"
    # Told otherwise, it acts.
    run(KubernetesScaler(api, NS, "vllm", allow_other_owners=True).set_replicas(5, "test"))
    assert len(double.scale_writes) == 1


def test_refuses_when_a_keda_scaledobject_targets_it(kube):
    double, api = kube
    double.scaled_objects = [{"metadata": {"name": "vllm-so"}, "spec": {"scaleTargetRef": {"name": "vllm"}}}]
    with pytest.raises(ScaleRefused, match="ScaledObject/vllm-so"):
        run(KubernetesScaler(api, NS, "vllm").set_replicas(5, "test"))


def _discovery(double, api):
    d = EndpointSliceDiscovery(api, NS, "vllm", double.metrics_port, watch_timeout_s=5)
    d.start()
    assert d.synced.wait(5)
    return d


def test_endpointslice_watch_tracks_pods_through_cold_start(kube):
    double, api = kube
    d = _discovery(double, api)
    try:
        assert wait_for(lambda: sum(p.state is ReplicaState.READY for p in run(d.pods())) == 2)
        run(KubernetesScaler(api, NS, "vllm").set_replicas(3, "test"))
        # The new pod shows up starting (in the slice, not ready), then ready.
        assert wait_for(lambda: any(p.state is ReplicaState.STARTING for p in run(d.pods())), 5)
        assert wait_for(lambda: sum(p.state is ReplicaState.READY for p in run(d.pods())) == 3)
        pods = run(d.pods())
        assert all(p.metrics_url.startswith("http://127.0.0.") for p in pods)
    finally:
        d.stop()


def test_watch_410_relists_and_keeps_state(kube):
    double, api = kube
    d = _discovery(double, api)
    try:
        assert wait_for(lambda: sum(p.state is ReplicaState.READY for p in run(d.pods())) == 2)
        relists = d.relists
        double.faults.expire_next_watch = True
        # The current watch ends at its timeout; the next one gets 410 and must re-list.
        run(KubernetesScaler(api, NS, "vllm").set_replicas(1, "test"))
        assert wait_for(lambda: d.relists >= relists + 2, 15)
        assert wait_for(lambda: len([p for p in run(d.pods()) if p.state is ReplicaState.READY]) == 1, 10)
    finally:
        d.stop()


def test_api_down_then_back_recovers_discovery(kube):
    double, api = kube
    d = _discovery(double, api)
    try:
        double.faults.api_down = True
        assert wait_for(lambda: d.errors > 0, 10)
        double.faults.api_down = False
        run(KubernetesScaler(api, NS, "vllm").set_replicas(3, "test"))
        assert wait_for(lambda: sum(p.state is ReplicaState.READY for p in run(d.pods())) == 3, 20)
    finally:
        d.stop()


def test_loop_holds_when_a_pod_returns_garbage_and_scrapes_the_rest(kube):
    double, api = kube
    d = _discovery(double, api)
    try:
        assert wait_for(lambda: sum(p.state is ReplicaState.READY for p in run(d.pods())) == 2)
        pods = run(d.pods())
        double.faults.metrics_garbage_pods.add(pods[0].name)
        double.faults.metrics_timeout_pods.add(pods[1].name)
        scaler = KubernetesScaler(api, NS, "vllm")
        policy = registry.create("static", replicas=1)  # wants fewer: must not happen on bad data
        loop = TargetLoop("vllm", policy, ScaleLimits(max_replicas=5), OutageRules(), d,
                          ScrapeSource("vllm", timeout_s=0.5), scaler, Telemetry())
        async def one_tick():
            try:
                return await loop.tick()
            finally:
                await loop.source.close()

        started = time.monotonic()
        last = run(one_tick())
        assert time.monotonic() - started < 3  # the hung pod did not block the tick
        assert sorted(e.split(":")[0] for e in last.scrape_errors.values()) == ["timeout", "unparseable"]
        assert len(last.missing) == 2 and last.desired == 2 and not last.applied
        assert "hold" in (last.guard or "")
        assert double.scale_writes == []
    finally:
        d.stop()


def test_leader_election_exactly_one_writes_and_fails_over(kube):
    double, api = kube

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
        lease = double.leases[(NS, "qscale")]
        assert lease["spec"]["holderIdentity"] == other.identity
        assert lease["spec"]["leaseTransitions"] == 1
        other.stop()
        await (tb if first is a else ta)

    run(scenario())


def test_a_write_whose_answer_times_out_is_not_written_twice(kube):
    double, api = kube
    double.faults.scale_write_delay_s = 2.0  # the write lands, but after the client gave up
    scaler = KubernetesScaler(api, NS, "vllm", request_timeout_s=1.0)
    run(scaler.set_replicas(4, "test"))
    assert [w["replicas"] for w in double.scale_writes] == [4]
    assert run(scaler.current_replicas()) == 4


def test_two_autoscaler_processes_only_the_leader_writes(kube, tmp_path):
    """`qscale run` twice with leader election against the double: one writes, the other
    decides (its windows stay warm) but never writes; when the leader stops, the other takes over."""
    import json
    import textwrap

    from tests.servers import http_get, qscale_process, wait_http

    double, _ = kube
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
