"""The Kubernetes external metrics API (external.metrics.k8s.io/v1beta1), so an HPA can scale
on qscale's signals: `GET /apis/external.metrics.k8s.io/v1beta1` (discovery) and
`GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=...`.

Each target yields one item per metric, labelled `target=<name>` (and `deployment=<name>`
for Kubernetes targets), valued from its last decision's signals, as a canonical Quantity.
Not implemented yet: delegated authentication (TokenReview / SubjectAccessReview) of the
aggregator's requests - deploy behind the APIService with the RBAC in manifests/, and
treat the endpoint as cluster-internal.
"""

from __future__ import annotations

import math
import re
import time

from aiohttp import web

GROUP_VERSION = "external.metrics.k8s.io/v1beta1"

# metric name -> how to read it from a LastDecision
METRICS = {
    "vllm_num_requests_waiting": lambda d: d.signals["waiting"],
    "vllm_num_requests_running": lambda d: d.signals["running"],
    "vllm_kv_cache_usage_perc": lambda d: d.signals["kv_cache_usage"],
    "qscale_arrival_rate": lambda d: d.signals["arrival_rate"],
    "qscale_arrival_rate_forecast": lambda d: d.terms.get("forecast_rate"),
    "qscale_desired_replicas": lambda d: d.desired,
}


def format_milli(m: int) -> str:
    """Canonical DecimalSI Quantity for a milli-value (apimachinery's AsCanonicalBytes)."""
    if m == 0:
        return "0"
    sign, a, e = ("-" if m < 0 else ""), abs(m), -3
    while a % 10 == 0:
        a //= 10
        e += 1
    r = e % 3
    if r == 1:
        a *= 10
        e -= 1
    elif r == 2:
        a *= 100
        e -= 2
    suffix = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}[e]
    return f"{sign}{a}{suffix}"


def quantity(value: float) -> str:
    return format_milli(math.ceil(value * 1000 - 1e-9) if value >= 0 else -math.ceil(-value * 1000 - 1e-9))


_REQ = re.compile(r"\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(=|==|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def parse_selector(text: str) -> list:
    """Label selector requirements: `=`, `==`, `!=`, `in (...)`, `notin (...)`, `key`, `!key`."""
    reqs = []
    if not text:
        return reqs
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in parts:
        m = _REQ.match(part)
        if not m:
            raise ValueError(f"invalid label selector: {part!r}")
        neg, key, op, val, setop, values = m.groups()
        if op:
            reqs.append((key, "!=" if op == "!=" else "=", {val}))
        elif setop:
            reqs.append((key, setop, {v.strip() for v in values.split(",") if v.strip()}))
        else:
            reqs.append((key, "!exists" if neg else "exists", set()))
    return reqs


def matches(labels: dict[str, str], reqs: list) -> bool:
    for key, op, values in reqs:
        have = labels.get(key)
        if op == "=" and have not in values:
            return False
        if op == "!=" and have in values:
            return False
        if op == "in" and have not in values:
            return False
        if op == "notin" and have in values:
            return False
        if op == "exists" and have is None:
            return False
        if op == "!exists" and have is not None:
            return False
    return True


def add_routes(app: web.Application, loops, labels_for) -> None:
    base = f"/apis/{GROUP_VERSION}"

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
            "resources": [{"name": name, "singularName": "", "namespaced": True, "kind": "ExternalMetricValueList",
                           "verbs": ["get"]} for name in METRICS],
        })

    async def values(request: web.Request) -> web.Response:
        metric, ns = request.match_info["metric"], request.match_info["ns"]
        read = METRICS.get(metric)
        if read is None:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": f"the server could not find the metric {metric} for namespace {ns}",
                                      "reason": "NotFound", "code": 404}, status=404)
        try:
            reqs = parse_selector(request.query.get("labelSelector", ""))
        except ValueError as exc:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": str(exc), "reason": "BadRequest", "code": 400}, status=400)
        items = []
        for loop in loops:
            labels = labels_for(loop, ns)
            if labels is None or loop.last is None or not matches(labels, reqs):
                continue
            value = read(loop.last)
            if value is None:
                continue
            items.append({"metricName": metric, "metricLabels": labels,
                          "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loop.last.time)),
                          "value": quantity(float(value))})
        return web.json_response({"kind": "ExternalMetricValueList", "apiVersion": GROUP_VERSION,
                                  "metadata": {}, "items": items})

    app.router.add_get(base, discovery)
    app.router.add_get(base + "/namespaces/{ns}/{metric}", values)
    async def livez(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/livez", livez)
