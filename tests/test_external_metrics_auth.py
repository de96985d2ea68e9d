"""The external metrics API authenticates and authorizes as an aggregated API server does, over
real TLS on loopback: the aggregator's client certificate (request-header CA from
kube-system/extension-apiserver-authentication, allowed names) carries X-Remote-User/-Group;
bearer tokens go through TokenReview, every request through SubjectAccessReview, both answered
by the Kubernetes API double in the real wire format; anything else is 401/403 with a Status."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from autoscaler.apiauth.attributes import ResourceAttributes, request_attributes
from autoscaler.apiauth.middleware import is_open
from autoscaler.apiauth.requestheader import Overrides, RequestHeaderAuthenticator, resolve
from autoscaler.apiauth.reviews import TtlCache
from autoscaler.apiauth.setup import api_security
from autoscaler.apiauth.tls import CertificateReloader, CertPair, issue, server_context
from autoscaler.config import AutoscalerConfig
from autoscaler.loop import LastDecision
from autoscaler.service import AutoscalerService
from policies import Signals
from tests.helpers import StubBackend
from tests.k8s_double import (
    BOOTSTRAP_RULES,
    AccessRule,
    KubeDouble,
    TokenUser,
    extension_apiserver_authentication,
    rbac_access_rules,
)
from tests.servers import free_port
from tests.test_manifests import overlay

HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
HPA_GROUPS = ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
METRIC_PATH = "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/inference_queue_depth"
DISCOVERY = "/apis/external.metrics.k8s.io/v1beta1"
EXT = "external.metrics.k8s.io"


@dataclass
class Pki:
    folder: Path
    serving_ca: CertPair
    aggregator: CertPair  # front-proxy-client, signed by the request-header CA
    stranger: CertPair  # CN front-proxy-client, signed by another CA
    other_name: CertPair  # signed by the request-header CA, CN not allowed
    requestheader_ca: CertPair

    def files(self, name: str, pair: CertPair) -> tuple[str, str]:
        cert, key = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        return str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    serving_ca = issue("qscale-test-serving-ca", is_ca=True)
    rh_ca = issue("front-proxy-ca", is_ca=True)
    other_ca = issue("front-proxy-ca", is_ca=True)  # same name, different key: not trusted
    p = Pki(folder, serving_ca, issue("front-proxy-client", rh_ca, client=True),
            issue("front-proxy-client", other_ca, client=True), issue("some-client", rh_ca, client=True), rh_ca)
    p.files("serving", issue("qscale", serving_ca, hosts=("127.0.0.1", "localhost")))
    (folder / "serving-ca.crt").write_bytes(serving_ca.cert_pem)
    return p


READER = TokenUser("system:serviceaccount:monitoring:reader",
                   ("system:serviceaccounts", "system:serviceaccounts:monitoring", "system:authenticated"))
NOBODY = TokenUser("system:serviceaccount:default:nobody", ("system:serviceaccounts", "system:authenticated"))
# The observability overlay's scraper (manifests/overlays/observability/monitors.yaml).
METRICS_READER = TokenUser("system:serviceaccount:qscale-system:qscale-metrics-reader",
                           ("system:serviceaccounts", "system:serviceaccounts:qscale-system", "system:authenticated"))
SPELLING = TokenUser("system:serviceaccount:monitoring:spelling", ("system:authenticated",))
# The keda overlay's reader (manifests/overlays/keda/reader.yaml), its RBAC as the overlay grants it.
KEDA_READER = TokenUser("system:serviceaccount:llm:qscale-targets-reader",
                        ("system:serviceaccounts", "system:serviceaccounts:llm", "system:authenticated"))


@pytest.fixture(scope="module")
def kube(pki):
    double = KubeDouble()
    double.start()
    double.configmaps[("kube-system", "extension-apiserver-authentication")] = extension_apiserver_authentication(
        pki.requestheader_ca.cert_pem.decode(), ["front-proxy-client"])
    double.auth.tokens = {"reader-token": READER, "nobody-token": NOBODY, "keda-token": KEDA_READER,
                          "spelling-token": SPELLING, "metrics-token": METRICS_READER}
    double.auth.rules = [
        # the HPA controller's bootstrap role: get,list on external.metrics.k8s.io/*
        AccessRule(users=(HPA_USER,), verbs=("get", "list"), api_groups=(EXT,), resources=("*",)),
        AccessRule(users=(READER.username,), verbs=("list",), api_groups=(EXT,), resources=("inference_queue_depth",),
                   namespaces=("llm",)),
        AccessRule(groups=("team-a",), verbs=("list",), api_groups=(EXT,), resources=("inference_queue_depth",)),
        AccessRule(users=(SPELLING.username,), verbs=("list",), api_groups=(EXT,),
                   resources=("inference_queue_depth",)),
        AccessRule(users=(SPELLING.username,), verbs=("get",), non_resource_urls=("/metrics",)),
        # system:discovery and system:public-info-viewer: what every token may read
        *BOOTSTRAP_RULES,
        *rbac_access_rules(overlay("keda")),
        *rbac_access_rules(overlay("observability")),
    ]
    yield double
    double.stop()


def decision(waiting: float) -> LastDecision:
    signals = Signals(time=0.0, replicas=(), current_replicas=2, total_waiting=waiting, total_running=8,
                      ready_replicas=2, starting_replicas=0, draining_replicas=0, mean_kv_cache_usage=0.5,
                      arrival_rate=3.0, completion_rate=3.0, complete=True)
    return LastDecision(time.time(), 2, 5, 5, "r", False, True, [], None, {}, signals, {})


class RunningService:
    """An AutoscalerService on its own event-loop thread, stopped with the module."""

    def __init__(self, config: AutoscalerConfig) -> None:
        self.service = AutoscalerService(config)
        for loop in self.service.loops:
            loop.backend = StubBackend(current=2)  # every tick fails: the test's decision stays
            loop.last = decision(23)
        self.port = config.host_port[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.service.run(),), daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                http.client.HTTPSConnection("127.0.0.1", self.port, timeout=1,
                                            context=ssl._create_unverified_context()).request("GET", "/livez")
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the service did not start")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.service.stop)
        self.thread.join(15)
        self.loop.close()


def service_config(pki: Pki, kube: KubeDouble, **extra) -> AutoscalerConfig:
    cert, key = str(pki.folder / "serving.crt"), str(pki.folder / "serving.key")
    return AutoscalerConfig(listen=f"127.0.0.1:{free_port()}", tick_s=3600, authentication="delegated",
                            tls_cert_file=cert, tls_key_file=key, kube_api_url=f"http://127.0.0.1:{kube.port}",
                            targets=[{"name": name, "policy": "static", "params": {"replicas": 2},
                                      "local": {"service_port": free_port(), "base_port": free_port()}}
                                     for name in ("chat", "vllm")], **extra)


@pytest.fixture(scope="module")
def server(pki, kube):
    running = RunningService(service_config(pki, kube))
    running.start()
    yield running
    running.stop()


def client_context(pki: Pki, cert: CertPair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.folder / "serving-ca.crt"))
    if cert is not None:
        ctx.load_cert_chain(*pki.files(f"client-{id(cert)}", cert))
    return ctx


def get(server: RunningService, pki: Pki, path: str, cert: CertPair | None = None,
        headers: dict | list | None = None) -> tuple[int, dict | str]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=client_context(pki, cert))
    try:
        conn.putrequest("GET", path)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for name, value in items:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body)
    except json.JSONDecodeError:
        return resp.status, body


def hpa_headers(user: str = HPA_USER, groups: list[str] = HPA_GROUPS) -> list[tuple[str, str]]:
    return [("X-Remote-User", user)] + [("X-Remote-Group", g) for g in groups]


def reviews_since(kube: KubeDouble, mark: int) -> list[dict]:
    return kube.auth.asked[mark:]


def assert_status(body, code: int, reason: str) -> None:
    assert isinstance(body, dict), body
    assert (body["kind"], body["apiVersion"], body["status"], body["code"], body["reason"]) == (
        "Status", "v1", "Failure", code, reason), body


# --- the aggregator ---------------------------------------------------------------------


def test_the_aggregators_certificate_with_the_hpa_user_gets_the_list(server, pki, kube):
    mark = len(kube.auth.asked)
    code, body = get(server, pki, METRIC_PATH + "?labelSelector=target%3Dchat", pki.aggregator, hpa_headers())
    assert code == 200, body
    assert body["kind"] == "ExternalMetricValueList"
    assert [(i["metricName"], i["value"], i["metricLabels"]) for i in body["items"]] == [
        ("inference_queue_depth", "23", {"target": "chat"})]
    (review,) = reviews_since(kube, mark)  # no TokenReview: the certificate authenticated
    assert review["kind"] == "SubjectAccessReview"
    spec = review["spec"]
    assert spec["user"] == HPA_USER and spec["groups"] == HPA_GROUPS
    assert spec["resourceAttributes"] == {"group": EXT, "version": "v1beta1", "resource": "inference_queue_depth",
                                          "namespace": "llm", "verb": "list"}


def test_the_aggregators_availability_probe_as_system_masters_is_allowed_without_a_review(server, pki, kube):
    mark = len(kube.auth.asked)
    code, body = get(server, pki, DISCOVERY, pki.aggregator,
                     hpa_headers("system:kube-aggregator", ["system:masters", "system:authenticated"]))
    assert code == 200 and body["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert {"inference_queue_depth", "inference_active_requests"} <= {r["name"] for r in body["resources"]}
    assert reviews_since(kube, mark) == []


def test_a_user_the_access_review_denies_gets_403(server, pki, kube):
    code, body = get(server, pki, METRIC_PATH, pki.aggregator, hpa_headers("jane", ["system:authenticated"]))
    assert_status(body, 403, "Forbidden")
    assert code == 403
    assert body["message"] == ('inference_queue_depth.external.metrics.k8s.io is forbidden: User "jane" cannot '
                               'list resource "inference_queue_depth" in API group "external.metrics.k8s.io" '
                               'in the namespace "llm"')
    assert body["details"] == {"group": EXT, "kind": "inference_queue_depth"}


def test_the_aggregators_certificate_without_a_user_header_is_401(server, pki):
    code, body = get(server, pki, METRIC_PATH, pki.aggregator)
    assert code == 401
    assert_status(body, 401, "Unauthorized")


# --- everyone else ----------------------------------------------------------------------


def test_no_certificate_and_no_token_is_401(server, pki):
    code, body = get(server, pki, METRIC_PATH)
    assert code == 401 and body["message"] == "Unauthorized"
    assert_status(body, 401, "Unauthorized")
    assert get(server, pki, DISCOVERY)[0] == 401
    assert get(server, pki, "/api/v1/targets")[0] == 401
    assert get(server, pki, "/metrics")[0] == 401


def test_a_client_certificate_from_another_ca_is_refused(server, pki, kube):
    """Same CN, same issuer name, another key: the handshake fails (the context trusts only the
    request-header CA), so the forged headers never reach a handler. So does a certificate of
    the right CA that is not for client authentication (serverAuth only)."""
    mark = len(kube.auth.asked)
    serving_only = issue("front-proxy-client", pki.requestheader_ca, client=False)
    for cert in (pki.stranger, serving_only):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            get(server, pki, METRIC_PATH, cert, hpa_headers("system:admin", ["system:masters"]))
    assert reviews_since(kube, mark) == []


def test_forged_identity_headers_without_the_aggregators_certificate_are_never_honoured(server, pki, kube):
    mark = len(kube.auth.asked)
    forged = hpa_headers("system:admin", ["system:masters"])
    code, body = get(server, pki, METRIC_PATH, None, forged)
    assert code == 401, body
    # signed by the request-header CA, but its CN is not an allowed name
    code, body = get(server, pki, METRIC_PATH, pki.other_name, forged)
    assert code == 401, body
    # with a token, the token's user is who asks: the headers are ignored
    code, body = get(server, pki, METRIC_PATH, None, forged + [("Authorization", "Bearer nobody-token")])
    assert code == 403 and 'User "system:serviceaccount:default:nobody"' in body["message"], body
    asked = reviews_since(kube, mark)
    assert [a["kind"] for a in asked] == ["TokenReview", "SubjectAccessReview"]
    assert asked[1]["spec"]["user"] == NOBODY.username and "system:masters" not in asked[1]["spec"]["groups"]


def test_a_token_the_token_review_rejects_is_401(server, pki, kube):
    mark = len(kube.auth.asked)
    code, body = get(server, pki, METRIC_PATH, None, {"Authorization": "Bearer not-a-real-token"})
    assert code == 401
    assert_status(body, 401, "Unauthorized")
    assert [(a["kind"], a["spec"]["token"]) for a in reviews_since(kube, mark)] == [
        ("TokenReview", "not-a-real-token")]


def test_a_token_user_the_access_review_allows_gets_the_list_and_answers_are_cached(server, pki, kube):
    mark = len(kube.auth.asked)
    for _ in range(3):
        code, body = get(server, pki, METRIC_PATH, None, {"Authorization": "Bearer reader-token"})
        assert code == 200 and body["items"][0]["value"] == "23", body
    # one TokenReview and one SubjectAccessReview for the three requests (10 s cache)
    assert [a["kind"] for a in reviews_since(kube, mark)] == ["TokenReview", "SubjectAccessReview"]
    # another namespace is another question, which the review denies
    code, body = get(server, pki, METRIC_PATH.replace("/llm/", "/default/"), None,
                     {"Authorization": "Bearer reader-token"})
    assert code == 403 and 'in the namespace "default"' in body["message"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_any_pods_token_may_read_discovery_but_not_the_targets_api(server, pki, kube):
    """system:discovery lets every authenticated user GET /api and /api/*: the targets API is
    authorized as the resource `targets` of the core group, which no bootstrap role grants."""
    assert get(server, pki, DISCOVERY, None, bearer("nobody-token"))[0] == 200  # the bootstrap rules are there
    for path in ("/api/v1/targets", "/api/v1/targets/vllm"):
        code, body = get(server, pki, path, None, bearer("nobody-token"))
        assert code == 403, (path, body)
        assert_status(body, 403, "Forbidden")
    code, body = get(server, pki, "/api/v1/targets/vllm", None, bearer("nobody-token"))
    assert body["message"] == ('targets "vllm" is forbidden: User "system:serviceaccount:default:nobody" cannot '
                               'get resource "targets" in API group "" at the cluster scope')


def test_the_keda_reader_reads_its_target_and_nothing_else(server, pki, kube):
    """The keda overlay's ClusterRole (get on targets, resourceNames [vllm]) is exactly what the
    ScaledObject's GET /api/v1/targets/vllm needs."""
    mark = len(kube.auth.asked)
    code, body = get(server, pki, "/api/v1/targets/vllm", None, bearer("keda-token"))
    assert code == 200 and body["name"] == "vllm" and body["desired"] == 5, body
    (sar,) = [a for a in reviews_since(kube, mark) if a["kind"] == "SubjectAccessReview"]
    assert sar["spec"]["resourceAttributes"] == {"group": "", "version": "v1", "resource": "targets",
                                                 "name": "vllm", "verb": "get"}
    for path in ("/api/v1/targets", "/api/v1/targets/chat", "/metrics", METRIC_PATH):
        assert get(server, pki, path, None, bearer("keda-token"))[0] == 403, path


def test_one_user_in_two_groups_gets_two_answers(server, pki, kube):
    """The cached answer is keyed on everything the review asks: the same user in a group the
    rules allow and in one they do not must not share it."""
    user = "jane-in-teams"
    assert get(server, pki, METRIC_PATH, pki.aggregator, hpa_headers(user, ["team-a", "system:authenticated"]))[0] == 200
    code, body = get(server, pki, METRIC_PATH, pki.aggregator, hpa_headers(user, ["team-b", "system:authenticated"]))
    assert code == 403, body
    assert get(server, pki, METRIC_PATH, pki.aggregator, hpa_headers(user, ["team-a", "system:authenticated"]))[0] == 200


def test_spellings_of_one_path_cost_one_review(server, pki, kube):
    """`//apis/...` asks what `/apis/...` asks (the same resource attributes), `//metrics` what
    `/metrics` asks: one SubjectAccessReview each, whatever the spelling (only the proper one is
    served; the others are 404)."""
    mark = len(kube.auth.asked)
    codes = [get(server, pki, path, None, bearer("spelling-token"))[0]
             for path in (METRIC_PATH, "/" + METRIC_PATH, METRIC_PATH.replace("/llm/", "//llm/"),
                          "/metrics", "//metrics", "///metrics")]
    assert codes == [200, 404, 404, 200, 404, 404]
    sars = [a["spec"] for a in reviews_since(kube, mark) if a["kind"] == "SubjectAccessReview"]
    assert [s.get("resourceAttributes") or s["nonResourceAttributes"] for s in sars] == [
        {"group": EXT, "version": "v1beta1", "resource": "inference_queue_depth", "namespace": "llm", "verb": "list"},
        {"path": "/metrics", "verb": "get"}]


# --- a flood of reviews ----------------------------------------------------------------------


async def _to_thread_latency() -> float:
    """How long `asyncio.to_thread` (the control loop's Kubernetes and Prometheus calls) waits for
    a thread of the event loop's default executor."""
    start = time.perf_counter()
    await asyncio.to_thread(time.sleep, 0)
    return time.perf_counter() - start


def probe(running: RunningService) -> float:
    return asyncio.run_coroutine_threadsafe(_to_thread_latency(), running.loop).result(60)


def junk_token_burst(running: RunningService, pki: Pki, n: int) -> list[tuple[int, dict, str | None]]:
    """`n` requests at once, each with a token no TokenReview knows: (status, body, Retry-After)."""
    import aiohttp

    async def one(session, i: int):
        async with session.get(f"https://127.0.0.1:{running.port}{METRIC_PATH}",
                               headers={"Authorization": f"Bearer junk-{i}"}) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers.get("Retry-After")

    async def all_at_once():
        connector = aiohttp.TCPConnector(limit=0, ssl=client_context(pki))
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await asyncio.gather(*(one(session, i) for i in range(n)))

    return asyncio.run(all_at_once())


def token_reviews(kube: KubeDouble, mark: int) -> int:
    return sum(a["kind"] == "TokenReview" for a in reviews_since(kube, mark))


def test_a_junk_token_flood_leaves_the_control_loops_threads_free_and_is_cut_off_with_429(pki, kube):
    """Every review answered late (0.3 s) and 160 junk tokens at once: the reviews run on threads
    of their own, so `asyncio.to_thread` on the default executor (the control loop's Kubernetes
    and Prometheus calls) waits no longer than when idle (a generous factor: before, it queued
    behind the reviews, seconds); reviews past the cap are not queued but answered 429."""
    from concurrent.futures import ThreadPoolExecutor

    running = RunningService(service_config(pki, kube))
    running.start()
    try:
        idle = max(probe(running) for _ in range(5))
        mark = len(kube.auth.asked)
        kube.faults.review_delay_s = 0.3
        with ThreadPoolExecutor(1) as pool:
            answers = pool.submit(junk_token_burst, running, pki, 160)
            deadline = time.monotonic() + 30
            while token_reviews(kube, mark) < 8 and time.monotonic() < deadline:
                time.sleep(0.01)  # the review threads (and, before, the default executor) are busy
            busy = max(probe(running) for _ in range(3))
            results = answers.result(120)
    finally:
        kube.faults.review_delay_s = 0.0
        running.stop()
    assert busy <= max(0.25, 20 * idle), (busy, idle)
    codes = [code for code, _, _ in results]
    assert set(codes) <= {401, 429} and codes.count(429) >= 1 and codes.count(401) >= 1, codes
    assert token_reviews(kube, mark) == codes.count(401)  # a 429 costs the API server nothing
    code, body, retry_after = next(r for r in results if r[0] == 429)
    assert_status(body, 429, "TooManyRequests")
    assert retry_after == "1" and body["details"] == {"retryAfterSeconds": 1}


def test_the_observability_scraper_reads_metrics_and_nothing_else(server, pki):
    code, body = get(server, pki, "/metrics", None, bearer("metrics-token"))
    assert code == 200 and "qscale_desired_replicas" in body
    for path in ("/api/v1/targets", "/api/v1/targets/vllm", METRIC_PATH):
        assert get(server, pki, path, None, bearer("metrics-token"))[0] == 403, path
    assert get(server, pki, "/metrics", None, bearer("nobody-token"))[0] == 403  # not every token


def test_the_review_pool_counts_a_call_until_its_thread_ends():
    """A request that gives up does not free the place its review still holds on a thread."""
    from autoscaler.apiauth.reviews import Overloaded, ReviewPool

    pool = ReviewPool(threads=1, max_in_flight=2)
    go_on = threading.Event()

    def slow(_request_timeout: float) -> str:
        go_on.wait(10)
        return "done"

    async def scenario() -> None:
        first, second = asyncio.ensure_future(pool.call(slow)), asyncio.ensure_future(pool.call(slow))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await pool.call(slow)
        first.cancel()  # its caller gives up; the call runs on
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await pool.call(slow)
        go_on.set()
        assert await second == "done"
        await asyncio.sleep(0.05)
        assert pool.in_flight == 0

    try:
        asyncio.run(scenario())
    finally:
        go_on.set()
        pool.close()


def test_health_endpoints_stay_open(server, pki):
    assert get(server, pki, "/healthz") == (200, "ok")
    assert get(server, pki, "/livez") == (200, "ok")
    code, body = get(server, pki, "/readyz")  # 503 until a tick completes; never 401/403
    assert code == 503 and body == "waiting for the first tick"


@pytest.mark.parametrize(("authentication", "shows_error"), [("delegated", False), ("none", True)])
def test_an_unhealthy_healthz_names_the_stalled_target_but_its_error_only_where_all_is_open(
        pki, kube, authentication, shows_error):
    """/healthz is open to anyone: a tick's error (a backend's message, a URL) is for
    /api/v1/targets, which is authorized - unless nothing is (authentication: none)."""
    from aiohttp.test_utils import TestClient, TestServer

    config = service_config(pki, kube).model_copy(update={"authentication": authentication})
    service = AutoscalerService(config)
    stalled = service.loops[0]
    stalled.last_tick_monotonic = time.monotonic() - 10 * config.unhealthy_after_ticks * config.tick_s
    stalled.last_error = "ConnectionError: https://10.0.0.7:6443 refused token for ns secret-team"
    for loop in service.loops[1:]:
        loop.last_tick_monotonic = time.monotonic()

    async def scenario() -> tuple[int, str]:
        async with TestClient(TestServer(service.app())) as http:
            resp = await http.get("/healthz")
            return resp.status, await resp.text()

    code, body = asyncio.run(scenario())
    assert code == 503 and body.startswith("chat: no tick completed for "), body
    assert ("secret-team" in body) is shows_error and ("10.0.0.7" in body) is shows_error


def test_an_unanswered_access_review_is_a_500_not_an_allow(server, pki, kube):
    kube.faults.api_down = True
    try:
        code, body = get(server, pki, METRIC_PATH, pki.aggregator, hpa_headers("someone-new", ["system:authenticated"]))
    finally:
        kube.faults.api_down = False
    assert code == 500
    assert_status(body, 500, "InternalError")
    assert "authorization" in body["message"]


def test_the_api_calls_delegated_auth_makes_are_these_three(server, pki, kube):
    """What RBAC must grant (system:auth-delegator, extension-apiserver-authentication-reader)."""
    get(server, pki, METRIC_PATH, None, {"Authorization": "Bearer reader-token"})
    get(server, pki, METRIC_PATH, pki.aggregator, hpa_headers("another-user", ["system:authenticated"]))
    calls = {(c.verb, c.group, c.resource, c.namespace, c.name) for c in kube.requests}
    assert calls == {("get", "", "configmaps", "kube-system", "extension-apiserver-authentication"),
                     ("create", "authentication.k8s.io", "tokenreviews", "", ""),
                     ("create", "authorization.k8s.io", "subjectaccessreviews", "", "")}


# --- configuration ----------------------------------------------------------------------


def test_a_mounted_request_header_ca_is_used_without_reading_the_configmap(pki, tmp_path):
    ca = tmp_path / "front-proxy-ca.crt"
    ca.write_bytes(pki.requestheader_ca.cert_pem)

    def no_configmap():
        raise AssertionError("the ConfigMap must not be read")

    settings = resolve(Overrides(client_ca_file=str(ca)), no_configmap)
    assert settings is not None and settings.client_ca_pem == pki.requestheader_ca.cert_pem
    assert settings.allowed_names == () and settings.username_headers == ("X-Remote-User",)
    ca.write_text("not a certificate")
    with pytest.raises(ValueError, match="no PEM certificate found"):
        resolve(Overrides(client_ca_file=str(ca)), no_configmap)


def test_the_configmap_lists_are_json_strings(pki):
    data = extension_apiserver_authentication(pki.requestheader_ca.cert_pem.decode(), ["front-proxy-client", "x"])
    data["requestheader-group-headers"] = '["X-Remote-Group","X-Other-Group"]'
    settings = resolve(Overrides(), lambda: data)
    assert settings is not None and settings.allowed_names == ("front-proxy-client", "x")
    assert settings.group_headers == ("X-Remote-Group", "X-Other-Group")
    assert resolve(Overrides(), dict) is None  # no request-header CA published: headers never trusted
    data["requestheader-allowed-names"] = "front-proxy-client"
    with pytest.raises(ValueError, match="requestheader-allowed-names is not a JSON list"):
        resolve(Overrides(), lambda: data)


def test_delegated_without_a_certificate_serves_a_self_signed_one_with_a_warning(pki, kube):
    config = service_config(pki, kube).model_copy(update={"tls_cert_file": None, "tls_key_file": None})
    with capture_logs() as logs:
        security = api_security(config)
    security.close()  # its review threads
    assert security.scheme == "https" and security.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    assert security.middlewares
    assert any(e["log_level"] == "warning" and "self-signed" in e["event"] for e in logs), logs


def test_none_is_plain_http_with_a_warning_and_is_the_default_only_on_loopback(pki, kube):
    config = service_config(pki, kube).model_copy(update={"authentication": "none", "tls_cert_file": None,
                                                          "tls_key_file": None})
    with capture_logs() as logs:
        security = api_security(config)
    assert security.ssl_context is None and security.middlewares == ()
    assert any(e["log_level"] == "warning" and "local development only" in e["event"] for e in logs), logs
    target = {"name": "a", "local": {}}
    assert AutoscalerConfig(listen="127.0.0.1:9090", targets=[target]).auth_mode == "none"
    assert AutoscalerConfig(listen="0.0.0.0:8443", targets=[target]).auth_mode == "delegated"
    assert AutoscalerConfig(listen="0.0.0.0:8443", authentication="none", targets=[target]).auth_mode == "none"
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        AutoscalerConfig(listen="0.0.0.0:8443", tls_cert_file="/tls/tls.crt", targets=[target])


# --- pieces ------------------------------------------------------------------------------


def test_request_attributes_as_the_api_server_resolves_them():
    a = request_attributes("GET", METRIC_PATH)
    assert a.verb == "list" and a.resource == ResourceAttributes(EXT, "v1beta1", "inference_queue_depth", "llm")
    assert request_attributes("GET", DISCOVERY).resource is None
    assert request_attributes("GET", "/metrics") == request_attributes("GET", "/metrics")
    # qscale's own API, as the API server resolves the legacy group: the resource `targets` of group ""
    listed, named = request_attributes("GET", "/api/v1/targets"), request_attributes("GET", "/api/v1/targets/vllm")
    assert listed.verb == "list" and listed.resource == ResourceAttributes("", "v1", "targets")
    assert named.verb == "get" and named.resource == ResourceAttributes("", "v1", "targets", name="vllm")
    assert request_attributes("GET", "/api").resource is None and request_attributes("GET", "/api/v1").resource is None
    named = request_attributes("GET", "/apis/apps/v1/namespaces/llm/deployments/vllm/scale")
    assert named.verb == "get" and named.resource == ResourceAttributes("apps", "v1", "deployments", "llm", "vllm",
                                                                        "scale")


def test_the_cache_key_is_the_whole_question():
    from autoscaler.apiauth.identity import UserInfo
    from autoscaler.apiauth.reviews import AccessQuestion

    jane = UserInfo.make("jane", ["team-a"], "uid-1", {"scopes": ["x"]})
    ask = request_attributes("GET", METRIC_PATH)
    others = [UserInfo.make("john", ["team-a"], "uid-1", {"scopes": ["x"]}),
              UserInfo.make("jane", ["team-b"], "uid-1", {"scopes": ["x"]}),
              UserInfo.make("jane", ["team-a"], "uid-2", {"scopes": ["x"]}),
              UserInfo.make("jane", ["team-a"], "uid-1", {"scopes": ["y"]})]
    assert all(AccessQuestion.of(u, ask) != AccessQuestion.of(jane, ask) for u in others)
    assert AccessQuestion.of(jane, request_attributes("GET", "//" + METRIC_PATH)) == AccessQuestion.of(jane, ask)
    assert AccessQuestion.of(jane, request_attributes("GET", METRIC_PATH.replace("llm", "other"))) != \
        AccessQuestion.of(jane, ask)
    metrics = AccessQuestion.of(jane, request_attributes("GET", "/metrics"))
    assert AccessQuestion.of(jane, request_attributes("GET", "//metrics")) == metrics
    assert AccessQuestion.of(jane, request_attributes("GET", "/version/")).path == "/version/"  # RBAC tells them apart


def test_open_paths_are_exact_or_a_prefix_without_dot_segments():
    paths = ["/healthz", "/api/v1/targets*"]
    assert is_open("/healthz", paths) and not is_open("/healthz/", paths) and not is_open("/healthzz", paths)
    assert is_open("/api/v1/targets", paths) and is_open("/api/v1/targets/chat", paths)
    assert not is_open("/api/v1/targets/../../metrics", paths) and not is_open("/metrics", paths)


def test_the_review_cache_expires_is_bounded_and_asks_once_for_concurrent_misses():
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(ttl_s=10, size=2, clock=lambda: now[0])
    calls: list[str] = []

    def fetcher(key: str, value: int):
        async def fetch() -> int:
            calls.append(key)
            await asyncio.sleep(0.01)
            return value
        return fetch

    async def scenario():
        assert await asyncio.gather(*(cache.get("a", fetcher("a", 1)) for _ in range(5))) == [1] * 5
        assert await cache.get("a", fetcher("a", 2)) == 1  # cached
        now[0] = 10.0
        assert await cache.get("a", fetcher("a", 3)) == 3  # expired at 10 s
        await cache.get("b", fetcher("b", 1))
        await cache.get("c", fetcher("c", 1))  # over the size: "a", the oldest, goes
        assert len(cache) == 2
        assert await cache.get("a", fetcher("a", 4)) == 4

    asyncio.run(scenario())
    assert calls == ["a", "a", "b", "c", "a"]


def test_allowed_names_limit_which_verified_certificates_may_name_a_user(pki):
    settings = resolve(Overrides(), lambda: extension_apiserver_authentication(
        pki.requestheader_ca.cert_pem.decode(), []))
    assert settings is not None
    anyone = RequestHeaderAuthenticator(settings)  # [] = any CN the CA signed
    named = RequestHeaderAuthenticator(resolve(Overrides(allowed_names=["front-proxy-client"]), lambda: {
        "requestheader-client-ca-file": pki.requestheader_ca.cert_pem.decode()}))
    proxy, other = {"subject": ((("commonName", "front-proxy-client"),),)}, {"subject": ((("commonName", "x"),),)}
    assert anyone.trusted(proxy) and anyone.trusted(other) and not anyone.trusted({}) and not anyone.trusted(None)
    assert named.trusted(proxy) and not named.trusted(other)


async def _served_common_name(port: int, ca: CertPair) -> str:
    _, writer = await asyncio.open_connection("127.0.0.1", port,
                                              ssl=ssl.create_default_context(cadata=ca.cert_pem.decode()))
    subject = writer.get_extra_info("peercert")["subject"]
    writer.close()
    return dict(rdn[0] for rdn in subject)["commonName"]


def test_a_renewed_serving_certificate_is_served_to_new_connections(pki, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first, second = (issue(cn, pki.serving_ca, hosts=("127.0.0.1",)) for cn in ("first", "second"))
    cert.write_bytes(first.cert_pem)
    key.write_bytes(first.key_pem)
    ctx = server_context(str(cert), str(key), None, None)
    reloader = CertificateReloader(ctx, str(cert), str(key))

    async def scenario() -> list[str]:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        seen = [await _served_common_name(port, pki.serving_ca)]
        assert not reloader.check()  # unchanged
        cert.write_bytes(second.cert_pem)  # half-way through a renewal: the key does not match yet
        assert not reloader.check()
        seen.append(await _served_common_name(port, pki.serving_ca))
        key.write_bytes(second.key_pem)
        assert reloader.check()
        seen.append(await _served_common_name(port, pki.serving_ca))
        await runner.cleanup()
        return seen

    assert asyncio.run(scenario()) == ["first", "first", "second"]
