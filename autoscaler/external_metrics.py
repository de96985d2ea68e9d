"""The Kubernetes external metrics API (external.metrics.k8s.io/v1beta1), so an HPA can scale
on qscale's signals: `GET /apis/external.metrics.k8s.io/v1beta1` (discovery) and
`GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=...`.

Each target yields one item per metric, labelled `target=<name>` (and `deployment=<name>`
for Kubernetes targets), valued from its last decision's signals, as a canonical Quantity.
`inference_queue_depth` and `inference_active_requests` are the names users' HPAs already ask
for (fleet totals of waiting and running requests, as `vllm_num_requests_waiting/_running`).
A request is checked before any work: the namespace must be a DNS-1123 label and the
label selector at most 4096 characters, parsed by a tokenizer in linear time (400 otherwise).

Who may call it is decided before these handlers run (autoscaler/apiauth): the aggregator's
client certificate, TokenReview and SubjectAccessReview, as an aggregated API server does.
The service account needs the `system:auth-delegator` ClusterRoleBinding and the kube-system
RoleBinding to `extension-apiserver-authentication-reader`.
"""

from __future__ import annotations

import math
import string
import time

from aiohttp import web

from autoscaler.apiauth.status import status_response
from autoscaler.kube.names import is_dns1123_label, is_dns1123_subdomain

GROUP_VERSION = "external.metrics.k8s.io/v1beta1"


def _waiting(d) -> float:
    return d.signals.total_waiting


def _running(d) -> float:
    return d.signals.total_running


# metric name -> how to read it from a LastDecision
METRICS = {
    "vllm_num_requests_waiting": _waiting,
    "vllm_num_requests_running": _running,
    "inference_queue_depth": _waiting,  # the name the blog's HPA asks for (averageValue "5")
    "inference_active_requests": _running,
    "vllm_kv_cache_usage_perc": lambda d: d.signals.mean_kv_cache_usage,
    "qscale_arrival_rate": lambda d: d.signals.arrival_rate,
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


MAX_SELECTOR_LEN = 4096  # longer is refused (400) before any parsing

_IDENT = frozenset(string.ascii_letters + string.digits + "-_./")
_NAME_INNER = frozenset(string.ascii_letters + string.digits + "-_.")
_ALNUM = frozenset(string.ascii_letters + string.digits)

Requirement = tuple[str, str, set[str]]  # (key, op, values); op: =, !=, in, notin, exists, !exists


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens in one left-to-right pass: id, op (= == !=), !, (, ), ",".
    Every character is read once or twice, so the work is linear in the length."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c in "(),":
            out.append((c, c))
            i += 1
        elif c in "!=":
            two = i + 1 < n and text[i + 1] == "="
            op = c + "=" if two else c
            out.append(("!" if op == "!" else "op", op))
            i += 2 if two else 1
        elif c in _IDENT:
            j = i + 1
            while j < n and text[j] in _IDENT:
                j += 1
            out.append(("id", text[i:j]))
            i = j
        else:
            raise ValueError(f"invalid label selector: unexpected {c!r} at position {i}")
    return out


def _name_ok(name: str) -> bool:
    """A label name or value: at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends."""
    return (len(name) <= 63 and (not name or (name[0] in _ALNUM and name[-1] in _ALNUM))
            and all(c in _NAME_INNER for c in name))


def _key(tok: tuple[str, str] | None) -> str:
    if tok is None or tok[0] != "id":
        found = repr(tok[1][:80]) if tok else "the end"
        raise ValueError(f"invalid label selector: expected a label key, found {found}")
    prefix, _, name = tok[1].rpartition("/")
    if not name or not _name_ok(name) or (tok[1].count("/") and not is_dns1123_subdomain(prefix)):
        raise ValueError(f"invalid label selector: bad label key {tok[1][:80]!r}")
    return tok[1]


def _value(tok: tuple[str, str]) -> str:
    if not _name_ok(tok[1]):
        raise ValueError(f"invalid label selector: bad label value {tok[1][:80]!r}")
    return tok[1]


class _Parser:
    """Recursive descent over the tokens; each token is looked at a bounded number of times."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, kind: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (kind is not None and tok[0] != kind):
            found = repr(tok[1][:80]) if tok else "the end"
            want = {"id": "a label value", None: "more"}.get(kind, repr(kind))
            raise ValueError(f"invalid label selector: expected {want}, found {found}")
        self.pos += 1
        return tok

    def selector(self) -> list[Requirement]:
        reqs = [self.requirement()]
        while self.peek() is not None:
            self.take(",")
            reqs.append(self.requirement())
        return reqs

    def requirement(self) -> Requirement:
        if self.peek() == ("!", "!"):
            self.pos += 1
            key = _key(self.peek())
            self.pos += 1
            return (key, "!exists", set())
        key = _key(self.peek())
        self.pos += 1
        tok = self.peek()
        if tok is None or tok[0] == ",":
            return (key, "exists", set())
        if tok[0] == "op":
            self.pos += 1
            nxt = self.peek()
            value = _value(self.take()) if nxt is not None and nxt[0] == "id" else ""
            return (key, "!=" if tok[1] == "!=" else "=", {value})
        if tok == ("id", "in") or tok == ("id", "notin"):
            self.pos += 1
            return (key, tok[1], self.values())
        raise ValueError(f"invalid label selector: unexpected {tok[1][:80]!r} after {key[:80]!r}")

    def values(self) -> set[str]:
        self.take("(")
        values = {_value(self.take("id"))}
        while self.peek() == (",", ","):
            self.pos += 1
            values.add(_value(self.take("id")))
        self.take(")")
        return values


def parse_selector(text: str, max_len: int = MAX_SELECTOR_LEN) -> list[Requirement]:
    """Label selector requirements: `=`, `==`, `!=`, `in (...)`, `notin (...)`, `key`, `!key`.
    Linear time; longer than `max_len` characters is refused before parsing."""
    if len(text) > max_len:
        raise ValueError(f"label selector too long: {len(text)} characters (at most {max_len})")
    tokens = _tokens(text)
    return _Parser(tokens).selector() if tokens else []


def matches(labels: dict[str, str], reqs: list[Requirement]) -> bool:
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
        if not is_dns1123_label(ns):
            return status_response(400, "BadRequest",
                                   f"namespace {ns[:80]!r} is not a valid namespace name (a DNS-1123 label)")
        read = METRICS.get(metric)
        if read is None:
            return status_response(404, "NotFound",
                                   f"the server could not find the metric {metric[:80]} for namespace {ns}")
        try:
            reqs = parse_selector(request.query.get("labelSelector", ""))
        except ValueError as exc:
            return status_response(400, "BadRequest", str(exc))
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
