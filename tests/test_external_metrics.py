"""The external metrics API: discovery, values as canonical Quantities, selectors, 404; the
names users' HPAs already ask for (inference_queue_depth), read as the HPA controller reads them."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from kubernetes.utils import parse_quantity

from autoscaler.external_metrics import (
    MAX_SELECTOR_LEN,
    add_routes,
    format_milli,
    matches,
    parse_selector,
    quantity,
)
from autoscaler.loop import LastDecision
from policies import Signals, registry
from policies.hpa import HpaController, HpaParams
from tests.helpers import ready, signals


@pytest.mark.parametrize(("milli", "text"), [(0, "0"), (5, "5m"), (250, "250m"), (1000, "1"), (1500, "1500m"),
                                             (2000, "2"), (12000, "12"), (10**6, "1k"), (1_500_000, "1500"),
                                             (120_000_000, "120k"), (-1500, "-1500m")])
def test_canonical_quantities(milli, text):
    assert format_milli(milli) == text
    assert parse_quantity(text) * 1000 == milli


def test_quantity_rounds_up_like_milli_value():
    assert quantity(0.0001) == "1m" and quantity(3.25) == "3250m" and quantity(7) == "7"


def test_selectors():
    labels = {"deployment": "vllm", "target": "chat"}
    assert matches(labels, parse_selector("deployment=vllm"))
    assert not matches(labels, parse_selector("deployment!=vllm"))
    assert matches(labels, parse_selector("deployment in (a, vllm),target"))
    assert matches(labels, parse_selector("deployment notin (a,b),!missing"))
    assert not matches(labels, parse_selector("missing"))
    assert matches(labels, parse_selector("deployment==vllm, example.com/tier notin (x)"))
    assert parse_selector("") == []
    for bad in ("deployment===x", "a in ()", "a in (b", "!a=b", "a=b c", "a b", "=x", "a=(", "a/=b", "a=b;c"):
        with pytest.raises(ValueError, match="invalid label selector"):
            parse_selector(bad)


class CountingStr(str):
    """A string that counts the characters read through it (indexing and slicing)."""

    reads = 0

    def __getitem__(self, key):
        CountingStr.reads += 1
        return str.__getitem__(self, key)


# Shapes that made the old regex backtrack (quadratic): long runs of spaces between a key and
# something that is not an operator, and long keys ending in garbage.
ADVERSARIAL = [lambda n: "a" + " " * (n - 2) + "x", lambda n: "a" + " " * (n // 2) + "in" + " " * (n // 2 - 4) + "x",
               lambda n: "a" * (n - 1) + "!", lambda n: "a in (" + "b," * ((n - 7) // 2) + "b)",
               lambda n: ("k=v," * (n // 4))[:-1]]


@pytest.mark.parametrize("make", ADVERSARIAL)
def test_selector_parsing_reads_each_character_a_bounded_number_of_times(make):
    for n in (512, MAX_SELECTOR_LEN):
        text = CountingStr(make(n))
        assert len(text) <= MAX_SELECTOR_LEN
        CountingStr.reads = 0
        with contextlib.suppress(ValueError):
            parse_selector(text)
        assert 0 < CountingStr.reads <= 3 * len(text) + 2, (n, CountingStr.reads)


def _best_time(text: str, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        with contextlib.suppress(ValueError):
            parse_selector(text)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("make", ADVERSARIAL[:3])
def test_selector_parsing_time_grows_linearly(make):
    """Four times the length costs about four times the time (the old regex: sixteen)."""
    small, large = _best_time(make(MAX_SELECTOR_LEN // 4)), _best_time(make(MAX_SELECTOR_LEN))
    assert large < 0.05 and large < 10 * small + 0.002, (small, large)


def test_a_selector_over_the_cap_is_refused_before_parsing():
    text = CountingStr("a" + " " * 8190 + "x")  # 8 KB of the worst shape
    CountingStr.reads = 0
    with pytest.raises(ValueError, match=f"too long: 8192 characters \\(at most {MAX_SELECTOR_LEN}\\)"):
        parse_selector(text)
    assert CountingStr.reads == 0


class _Loop:
    def __init__(self, name, waiting):
        self.name = name
        signals = Signals(time=0.0, replicas=(), current_replicas=2, total_waiting=waiting, total_running=8,
                          ready_replicas=2, starting_replicas=0, draining_replicas=0, mean_kv_cache_usage=0.5,
                          arrival_rate=3.0, completion_rate=3.0, complete=True)
        self.last = LastDecision(time.time(), 2, 3, 3, "r", True, False, [], None, {"forecast_rate": 4.2},
                                 signals, {})


@contextlib.asynccontextmanager
async def _serving(loops: list) -> AsyncIterator[str]:
    """The external metrics routes for `loops` on a free loopback port (namespace llm); yields
    the API's base URL."""
    app = web.Application()
    add_routes(app, loops, lambda loop, ns: {"deployment": loop.name} if ns == "llm" else None)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1"
    finally:
        await runner.cleanup()


def test_routes():
    async def scenario():
        async with _serving([_Loop("chat", 7.5), _Loop("code", 1)]) as base, aiohttp.ClientSession() as s:
            disc = await (await s.get(base)).json()
            one = await (await s.get(f"{base}/namespaces/llm/vllm_num_requests_waiting",
                                     params={"labelSelector": "deployment=chat"})).json()
            all_ = await (await s.get(f"{base}/namespaces/llm/vllm_num_requests_waiting")).json()
            other_ns = await (await s.get(f"{base}/namespaces/default/vllm_num_requests_waiting")).json()
            missing = await s.get(f"{base}/namespaces/llm/nope")
        return disc, one, all_, other_ns, missing.status

    disc, one, all_, other_ns, missing = asyncio.run(scenario())
    assert disc["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert {r["name"] for r in disc["resources"]} >= {"vllm_num_requests_waiting", "qscale_desired_replicas"}
    assert one["kind"] == "ExternalMetricValueList"
    assert [i["value"] for i in one["items"]] == ["7500m"] and one["items"][0]["metricLabels"] == {"deployment": "chat"}
    assert sum(parse_quantity(i["value"]) for i in all_["items"]) == 8.5
    assert other_ns["items"] == []
    assert missing == 404


def test_bad_namespaces_and_long_selectors_get_400_and_do_not_stall_the_server():
    async def scenario():
        app = web.Application()
        add_routes(app, [_Loop("chat", 7.5)], lambda loop, ns: {"deployment": loop.name})
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces"
        out = {}
        async with aiohttp.ClientSession() as s:
            for ns in ("%2e%2e%2fx", "..%2F", "LLM", "a" * 64, "-llm"):
                r = await s.get(f"{base}/{ns}/vllm_num_requests_waiting")
                out[ns] = (r.status, (await r.json())["message"])
            selector = "a" + " " * 6000 + "x"  # over the cap, the shape that stalled the old parser
            started = time.monotonic()
            answers = await asyncio.gather(*(s.get(f"{base}/llm/vllm_num_requests_waiting",
                                                   params={"labelSelector": selector}) for _ in range(40)))
            elapsed = time.monotonic() - started
            bodies = [await r.json() for r in answers]
        await runner.cleanup()
        return out, [r.status for r in answers], bodies, elapsed

    out, statuses, bodies, elapsed = asyncio.run(scenario())
    for ns, (code, message) in out.items():
        assert code == 400 and "not a valid namespace name" in message, ns
    assert out["%2e%2e%2fx"][1].startswith("namespace '../x'")
    assert statuses == [400] * 40
    assert all("label selector too long" in b["message"] and b["reason"] == "BadRequest" for b in bodies)
    assert elapsed < 3.0  # the old parser took 4.4 s for this; now it is request overhead only


# --- the blog's HPA on inference_queue_depth --------------------------------------------


def hpa_external_average_value(items: list[dict], average_value: str, status_replicas: int,
                               tolerance: float = 0.1) -> int:
    """The HPA controller on an External metric with an AverageValue target, written from
    upstream (replica_calculator.go GetExternalPerPodMetricReplicas; wire-formats 3.2): each
    item's MilliValue (ceil of q x 1000) summed; usage ratio = sum / (target x replicas); outside
    the tolerance, ceil(sum / target), else the current count. An empty list is an error."""
    if not items:
        raise LookupError("no metrics returned from external metrics API")
    usage = sum(math.ceil(parse_quantity(i["value"]) * 1000) for i in items)
    target = math.ceil(parse_quantity(average_value) * 1000)
    ratio = usage / (target * status_replicas)
    return math.ceil(usage / target) if abs(1.0 - ratio) > tolerance else status_replicas


class _FleetLoop:
    """A target whose last decision saw `waiting` requests on its ready replicas."""

    def __init__(self, name: str, waiting: list[float]):
        self.name = name
        self.signals = signals(0.0, [ready(f"{name}-{i}", w) for i, w in enumerate(waiting)])
        self.last = LastDecision(time.time(), len(waiting), len(waiting), len(waiting), "r", False, True, [],
                                 None, {}, self.signals, {})


async def _external_items(loops: list[_FleetLoop], metric: str, selector: str) -> list[dict]:
    async with _serving(loops) as base, aiohttp.ClientSession() as s, \
            s.get(f"{base}/namespaces/llm/{metric}", params={"labelSelector": selector}) as r:
        assert r.status == 200
        return (await r.json())["items"]


DOWN_NOW = {"stabilization_window_s": 0, "policies": [{"type": "Percent", "value": 100, "period_s": 15}]}


@pytest.mark.parametrize(("waiting", "params", "expected"), [
    # 23 waiting on 2 replicas, 5 per replica: ratio 2.3, ceil(23 / 5) = 5 (up to max(2x2, 2+4) allowed)
    ([11, 12], {}, 5),
    # 21 on 4: ratio 1.05, inside the 10 % tolerance: stay at 4
    ([5, 5, 5, 6], {}, 4),
    # 3 on 4: ratio 0.15, ceil(3 / 5) = 1 (no stabilization window, 100 % down per 15 s)
    ([1, 1, 1, 0], {"scale_down": DOWN_NOW}, 1),
    # 100 on 1 wants 20; the default behavior allows max(1 x 2, 1 + 4) = 5 in the first 15 s
    ([100], {"max_replicas": 50}, 5),
])
def test_the_blogs_hpa_on_inference_queue_depth_gets_the_replicas_direct_mode_computes(waiting, params, expected):
    """The blog's HPA: External `inference_queue_depth`, selector deployment=vllm, AverageValue "5".
    Its reading of our API, through our hpa policy's controller (behavior, limits), gives the
    replicas qscale's hpa policy computes in direct mode on the same signals."""
    fleet = _FleetLoop("vllm", waiting)
    other = _FleetLoop("other", [40, 40])  # another Deployment's queue: not selected
    items = asyncio.run(_external_items([fleet, other], "inference_queue_depth", "deployment=vllm"))
    assert [i["value"] for i in items] == [str(sum(waiting))]
    current = len(waiting)
    hpa_params = HpaParams(target_average_value=5, **params)
    via_hpa = HpaController(hpa_params).reconcile(
        0.0, current, hpa_external_average_value(items, "5", current), {}).desired_replicas
    direct = registry.create("hpa", target_average_value=5, **params).decide(fleet.signals).desired_replicas
    assert via_hpa == direct == expected


def test_inference_active_requests_is_the_fleet_total_running():  # _Loop: 8 running
    items = asyncio.run(_external_items([_Loop("vllm", 3)], "inference_active_requests", "deployment=vllm"))
    assert [(i["metricName"], i["value"]) for i in items] == [("inference_active_requests", "8")]


def test_an_hpa_reading_no_items_is_an_error_not_zero():
    with pytest.raises(LookupError, match="no metrics returned"):
        hpa_external_average_value([], "5", 2)
