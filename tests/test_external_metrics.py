"""The external metrics API: discovery, values as canonical Quantities, selectors, 404."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from kubernetes.utils import parse_quantity

from autoscaler.external_metrics import add_routes, format_milli, matches, parse_selector, quantity
from autoscaler.loop import LastDecision


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
    with pytest.raises(ValueError):
        parse_selector("deployment===x")


class _Loop:
    def __init__(self, name, waiting):
        self.name = name
        self.last = LastDecision(time.time(), 2, 3, 3, "r", True, False, [], None, {"forecast_rate": 4.2},
                                 {"waiting": waiting, "running": 8, "kv_cache_usage": 0.5, "arrival_rate": 3.0},
                                 [], {})


def test_routes():
    async def scenario():
        app = web.Application()
        loops = [_Loop("chat", 7.5), _Loop("code", 1)]
        add_routes(app, loops, lambda loop, ns: {"deployment": loop.name} if ns == "llm" else None)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1"
        async with aiohttp.ClientSession() as s:
            disc = await (await s.get(base)).json()
            one = await (await s.get(f"{base}/namespaces/llm/vllm_num_requests_waiting",
                                     params={"labelSelector": "deployment=chat"})).json()
            all_ = await (await s.get(f"{base}/namespaces/llm/vllm_num_requests_waiting")).json()
            other_ns = await (await s.get(f"{base}/namespaces/default/vllm_num_requests_waiting")).json()
            missing = await s.get(f"{base}/namespaces/llm/nope")
        await runner.cleanup()
        return disc, one, all_, other_ns, missing.status

    disc, one, all_, other_ns, missing = asyncio.run(scenario())
    assert disc["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert {r["name"] for r in disc["resources"]} >= {"vllm_num_requests_waiting", "qscale_desired_replicas"}
    assert one["kind"] == "ExternalMetricValueList"
    assert [i["value"] for i in one["items"]] == ["7500m"] and one["items"][0]["metricLabels"] == {"deployment": "chat"}
    assert sum(parse_quantity(i["value"]) for i in all_["items"]) == 8.5
    assert other_ns["items"] == []
    assert missing == 404
