"""An HTTP double of the Kubernetes API server, for driving the official client in tests.

It follows shared/reference/wire-formats.md: the Deployment scale subresource (GET, PUT
with resourceVersion conflicts, the three PATCH content types, 415 otherwise, 422 on
negative replicas), EndpointSlices (LIST, and WATCH as newline-delimited JSON events),
pod PATCH (annotations, e.g. the deletion cost), Leases, Events, HPAs and KEDA
ScaledObjects (404 when the CRD is "not installed"), ConfigMaps (e.g.
kube-system/extension-apiserver-authentication), TokenReview and SubjectAccessReview (201, with
the tokens and RBAC-like rules in `auth`), and Status error bodies.

Watch history is kept as the API server keeps it: `compact()` drops it, and a watch from a
resourceVersion older than the compaction gets what the server sends - HTTP 200, then one
ERROR event carrying a Status with code 410 "Expired", then the end of the stream.
`end_watches()` closes the open watch streams (as the server does after timeoutSeconds).

Deployments create pods that get a loopback IP (127.0.0.N) at once and become ready after
`cold_start_s`; each pod is served by an emulated vLLM replica on that IP, so the
autoscaler scrapes real /metrics. A scale-down removes pods as a ReplicaSet picks them
(not ready first, then the lowest `controller.kubernetes.io/pod-deletion-cost`, then the
newest). Faults are injected through `faults`; every request is recorded in `requests`
(verb, group, resource, namespace, name, answer), as an authorizer would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from server.emulator import EmulatedServer, EmulatorConfig
from simulations.profile import load_profile


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


def status(code: int, reason: str, message: str, details: dict | None = None) -> web.Response:
    return web.json_response(status_body(code, reason, message, details), status=code)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


@dataclass
class Faults:
    scale_write_errors: list[int] = field(default_factory=list)  # pop one per PUT/PATCH of scale
    retry_after: str | None = None  # Retry-After header on injected 429/503 answers
    scale_write_delay_s: float = 0.0  # applied, then answered this late
    api_down: bool = False  # every request gets 503
    metrics_timeout_pods: set[str] = field(default_factory=set)
    metrics_garbage_pods: set[str] = field(default_factory=set)
    review_delay_s: float = 0.0  # TokenReview and SubjectAccessReview answer this late (a slow API server)


@dataclass(frozen=True)
class ApiCall:
    """One request, as RBAC sees it: verb (get, list, watch, create, update, patch), API group,
    resource (with /subresource), namespace, object name ("" for collections) and the answer."""

    verb: str
    group: str
    resource: str
    namespace: str
    name: str
    status: int


def api_call(method: str, path: str, query: dict, status_code: int) -> ApiCall | None:
    """The RBAC view of a request; cluster-scoped resources have namespace ""."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    ns = ""  # cluster-scoped (tokenreviews, subjectaccessreviews, namespaces themselves)
    if rest[0] == "namespaces" and len(rest) >= 3:
        ns, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else ""
    watching = query.get("watch") in ("true", "1")
    verb = {"GET": "get" if name else ("watch" if watching else "list"), "POST": "create", "PUT": "update",
            "PATCH": "patch", "DELETE": "delete"}[method]
    return ApiCall(verb, group, resource, ns, name, status_code)


@dataclass
class FakePod:
    name: str
    ip: str
    created: float
    ready: bool = False
    terminating: bool = False
    server: Any = None
    annotations: dict[str, str] = field(default_factory=dict)

    def deletion_cost(self) -> int:
        try:
            return int(self.annotations.get(DELETION_COST, "0"))
        except ValueError:
            return 0


@dataclass
class FakeDeployment:
    namespace: str
    name: str
    replicas: int
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    pods: list[FakePod] = field(default_factory=list)
    rv: int = 0  # the Deployment's resourceVersion (spec or status changed)
    slice_rv: int = 0  # its EndpointSlice's



# --- delegated authentication and authorization (authentication.k8s.io, authorization.k8s.io) ---


@dataclass(frozen=True)
class AccessRule:
    """An RBAC grant, flattened: `verbs` on `resources` of `api_groups` (in `namespaces`; () is
    cluster-wide; only the objects `resource_names` when set), or `verbs` on `non_resource_urls`
    (a trailing * is a prefix), to any of `users` or `groups`. "*" matches anything, as in RBAC."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("*",)
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()

    def subject(self, user: str, groups: list[str]) -> bool:
        return user in self.users or any(g in self.groups for g in groups)

    def allows(self, spec: dict) -> bool:
        def has(values: tuple[str, ...], value: str) -> bool:
            return "*" in values or value in values

        ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if nra is not None:
            path = nra.get("path", "")
            return has(self.verbs, nra.get("verb", "")) and any(
                path == u or (u.endswith("*") and path.startswith(u[:-1])) for u in self.non_resource_urls)
        if ra is None or self.non_resource_urls:
            return False
        resource = ra.get("resource", "") + (f"/{ra['subresource']}" if ra.get("subresource") else "")
        return (has(self.verbs, ra.get("verb", "")) and has(self.api_groups, ra.get("group", ""))
                and has(self.resources, resource)
                and (not self.namespaces or has(self.namespaces, ra.get("namespace", "")))
                and (not self.resource_names or ra.get("name", "") in self.resource_names))


# Kubernetes' bootstrap grants to every caller (plugin/pkg/auth/authorizer/rbac/bootstrappolicy):
# ClusterRole system:discovery, bound to system:authenticated, and system:public-info-viewer,
# bound to system:authenticated and system:unauthenticated. Every service account's token has
# these: a path they cover is readable by any pod.
SYSTEM_DISCOVERY = AccessRule(groups=("system:authenticated",), verbs=("get",), non_resource_urls=(
    "/livez", "/readyz", "/healthz", "/version", "/version/", "/openapi", "/openapi/*", "/api", "/api/*",
    "/apis", "/apis/*"))
SYSTEM_PUBLIC_INFO_VIEWER = AccessRule(groups=("system:authenticated", "system:unauthenticated"), verbs=("get",),
                                       non_resource_urls=("/livez", "/readyz", "/healthz", "/version",
                                                          "/version/"))
BOOTSTRAP_RULES = (SYSTEM_DISCOVERY, SYSTEM_PUBLIC_INFO_VIEWER)


def _subjects(binding: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(users, groups) a binding names; a ServiceAccount is the user system:serviceaccount:ns:name."""
    users, groups = [], []
    for s in binding.get("subjects") or []:
        if s["kind"] == "ServiceAccount":
            users.append(f"system:serviceaccount:{s.get('namespace') or binding['metadata'].get('namespace', '')}:"
                         f"{s['name']}")
        elif s["kind"] == "User":
            users.append(s["name"])
        elif s["kind"] == "Group":
            groups.append(s["name"])
    return tuple(users), tuple(groups)


def _access_rule(rule: dict, users: tuple[str, ...], groups: tuple[str, ...], namespaces: tuple[str, ...]):
    verbs = tuple(rule["verbs"])
    if rule.get("nonResourceURLs"):
        return AccessRule(users, groups, verbs, non_resource_urls=tuple(rule["nonResourceURLs"]))
    return AccessRule(users, groups, verbs, tuple(rule.get("apiGroups") or ()), tuple(rule.get("resources") or ()),
                      namespaces, resource_names=tuple(rule.get("resourceNames") or ()))


def rbac_access_rules(docs) -> list[AccessRule]:
    """The grants of the Roles and ClusterRoles in `docs` (rendered manifests) through the bindings
    in `docs`, as the double's rules: a RoleBinding grants in its namespace, a ClusterRoleBinding
    everywhere. Bindings to roles not in `docs` (bootstrap roles) are left out."""
    roles = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d.get("rules") or []
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    out: list[AccessRule] = []
    for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        ns = b["metadata"].get("namespace", "") if b["kind"] == "RoleBinding" else ""
        ref = b["roleRef"]
        rules = roles.get((ref["kind"], ns if ref["kind"] == "Role" else "", ref["name"]))
        users, groups = _subjects(b)
        out += [_access_rule(r, users, groups, (ns,) if ns else ()) for r in rules or ()]
    return out


@dataclass
class TokenUser:
    """What TokenReview answers for a known token (a service account's, by default groups)."""

    username: str
    groups: tuple[str, ...] = ("system:authenticated",)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    extra: dict[str, list[str]] = field(default_factory=dict)

    def wire(self) -> dict:
        out: dict[str, Any] = {"username": self.username, "uid": self.uid, "groups": list(self.groups)}
        if self.extra:
            out["extra"] = self.extra
        return out


def extension_apiserver_authentication(requestheader_ca_pem: str, allowed_names: list[str],
                                       client_ca_pem: str = "") -> dict[str, str]:
    """The data of kube-system/extension-apiserver-authentication: lists are JSON strings."""
    data = {"requestheader-client-ca-file": requestheader_ca_pem,
            "requestheader-allowed-names": json.dumps(allowed_names),
            "requestheader-username-headers": json.dumps(["X-Remote-User"]),
            "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
            "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"])}
    if client_ca_pem:
        data = {"client-ca-file": client_ca_pem, **data}
    return data


@dataclass
class AuthReviews:
    """The API server's TokenReview and SubjectAccessReview answers: `tokens` it knows, `rules`
    it grants (system:masters is always allowed), and every review it was asked (`asked`)."""

    tokens: dict[str, TokenUser] = field(default_factory=dict)
    rules: list[AccessRule] = field(default_factory=list)
    asked: list[dict] = field(default_factory=list)  # {"kind": ..., "spec": ...}

    def token_review(self, body: dict) -> tuple[int, dict]:
        spec = body.get("spec") or {}
        self.asked.append({"kind": "TokenReview", "spec": spec})
        user = self.tokens.get(spec.get("token") or "")
        if user is None:
            st: dict = {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
        else:
            st = {"authenticated": True, "user": user.wire(), "audiences": ["https://kubernetes.default.svc"]}
        return 201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                     "metadata": {"creationTimestamp": None}, "spec": spec, "status": st}

    def access_review(self, body: dict) -> tuple[int, dict]:
        spec = body.get("spec") or {}
        self.asked.append({"kind": "SubjectAccessReview", "spec": spec})
        invalid = self._invalid(spec)
        if invalid:
            return 422, status_body(422, "Invalid", f"SubjectAccessReview.authorization.k8s.io \"\" is invalid: "
                                    f"{invalid}", {"group": "authorization.k8s.io", "kind": "SubjectAccessReview",
                                                   "causes": [{"reason": "FieldValueInvalid", "message": invalid}]})
        user, groups = spec.get("user", ""), spec.get("groups") or []
        if "system:masters" in groups:
            st = {"allowed": True}
        else:
            rule = next((r for r in self.rules if r.subject(user, groups) and r.allows(spec)), None)
            st = {"allowed": True, "reason": f"RBAC: allowed by test rule {self.rules.index(rule)}"} if rule else \
                {"allowed": False}
        return 201, {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                     "metadata": {"creationTimestamp": None}, "spec": spec, "status": st}

    @staticmethod
    def _invalid(spec: dict) -> str:
        attrs = [k for k in ("resourceAttributes", "nonResourceAttributes") if spec.get(k) is not None]
        if len(attrs) != 1:
            return "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or " \
                   "resourceAttributes must be specified"
        if not spec.get("user") and not spec.get("groups"):
            return "spec.user: Invalid value: \"\": at least one of user or group must be specified"
        return ""


class KubeDouble:
    def __init__(self, cold_start_s: float = 1.0, metrics_port: int = 18080, max_num_seqs: int = 8) -> None:
        self.cold_start_s = cold_start_s
        self.metrics_port = metrics_port
        self.max_num_seqs = max_num_seqs
        self.faults = Faults()
        self.deployments: dict[tuple[str, str], FakeDeployment] = {}
        self.hpas: list[dict] = []
        self.scaled_objects: list[dict] | None = None  # None: the KEDA CRD is not installed
        self.events: list[dict] = []
        self.leases: dict[tuple[str, str], dict] = {}
        self.scale_writes: list[dict] = []  # every successful scale write (method, replicas)
        self._rv = itertools.count(1000)
        self.rv = next(self._rv)
        self._slice_events: list[tuple[int, str, dict]] = []  # (rv, type, object) history
        self._compacted_rv = 0  # watches from an older resourceVersion get ERROR 410
        self._watch_epoch = 0  # bumped by end_watches(): open streams close
        self.expired_watches = 0  # ERROR 410 events sent
        self.requests: list[ApiCall] = []
        self.auth = AuthReviews()
        self.configmaps: dict[tuple[str, str], dict[str, str]] = {}  # (namespace, name) -> data
        self._ips = itertools.count(10)
        self._changed = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._pod_n = itertools.count(1)
        self._closing = False

    # --- state ------------------------------------------------------------------------

    def bump(self) -> int:
        self.rv = next(self._rv)
        return self.rv

    def add_deployment(self, namespace: str, name: str, replicas: int) -> None:
        def _add():
            d = FakeDeployment(namespace, name, replicas, rv=self.bump())
            self.deployments[(namespace, name)] = d
            self._reconcile(d)
        self.call(_add)

    def call(self, fn, *args):
        """Run `fn` on the double's loop thread and wait for it."""
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._acall(fn, *args), self.loop)
        return fut.result(10)

    async def _acall(self, fn, *args):
        out = fn(*args)
        if asyncio.iscoroutine(out):
            out = await out
        return out

    def _reconcile(self, d: FakeDeployment) -> None:
        live = [p for p in d.pods if not p.terminating]
        while len(live) < d.replicas:
            pod = FakePod(f"{d.name}-{next(self._pod_n):05d}", f"127.0.0.{next(self._ips)}", time.time())
            d.pods.append(pod)
            live.append(pod)
            self._slice_changed(d)
            asyncio.get_running_loop().call_later(self.cold_start_s, self._make_ready, d, pod)
        if len(live) > d.replicas:
            # As a ReplicaSet picks: not ready first, then the lowest deletion cost, then the newest.
            victims = sorted(live, key=lambda p: (p.ready, p.deletion_cost(), -p.created))[: len(live) - d.replicas]
            for pod in victims:
                pod.terminating = True
                asyncio.ensure_future(self._terminate(d, pod))
            self._slice_changed(d)

    def _make_ready(self, d: FakeDeployment, pod: FakePod) -> None:
        if pod.terminating:
            return
        asyncio.ensure_future(self._start_pod_server(d, pod))

    async def _start_pod_server(self, d: FakeDeployment, pod: FakePod) -> None:
        profile = load_profile("llama3-8b-h100").model_copy(update={"max_num_seqs": self.max_num_seqs})
        srv = EmulatedServer(EmulatorConfig(profile=profile, model_name=d.name))
        app = srv.build_app()
        faults = self.faults

        @web.middleware
        async def inject(request, handler):
            if request.path == "/metrics" and pod.name in faults.metrics_timeout_pods:
                await asyncio.sleep(30)
            if request.path == "/metrics" and pod.name in faults.metrics_garbage_pods:
                return web.Response(text="<html>not metrics</html>")
            return await handler(request)

        app.middlewares.append(inject)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, pod.ip, self.metrics_port).start()
        pod.server = (srv, runner)
        pod.ready = True
        self._slice_changed(d)

    async def _terminate(self, d: FakeDeployment, pod: FakePod) -> None:
        if pod.server is not None:
            srv, runner = pod.server
            await srv.drain()
            await runner.cleanup()
        if pod in d.pods:
            d.pods.remove(pod)
        self._slice_changed(d)

    def _slice(self, d: FakeDeployment, with_kind: bool) -> dict:
        eps = [{"addresses": [p.ip],
                "conditions": {"ready": p.ready and not p.terminating, "serving": p.ready,
                               "terminating": p.terminating},
                "targetRef": {"kind": "Pod", "namespace": d.namespace, "name": p.name, "uid": p.name},
                "nodeName": "gpu-node-1"} for p in d.pods]
        obj = {"metadata": {"name": f"{d.name}-slice", "generateName": f"{d.name}-", "namespace": d.namespace,
                            "uid": d.uid, "resourceVersion": str(d.slice_rv), "generation": 1,
                            "labels": {"kubernetes.io/service-name": d.name,
                                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
               "addressType": "IPv4", "endpoints": eps or None,
               "ports": [{"name": "http", "protocol": "TCP", "port": self.metrics_port}]}
        if with_kind:
            obj = {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", **obj}
        return obj

    def _slice_changed(self, d: FakeDeployment) -> None:
        rv = self.bump()
        d.rv = d.slice_rv = rv  # the pods changed: so did the slice and the Deployment's status
        self._slice_events.append((rv, "MODIFIED", self._slice(d, True)))
        self._notify()

    def _notify(self) -> None:
        """Wake every open watch: each waits on the Event current when it last looked."""
        self._changed.set()
        self._changed = asyncio.Event()

    def compact(self) -> None:
        """Drop the watch history (etcd compaction): resuming from before now is a 410."""
        self._slice_events.clear()
        self._compacted_rv = self.rv

    def end_watches(self) -> None:
        """Close every open watch stream, unsent events unsent (the client resumes from its RV)."""
        self._watch_epoch += 1
        self._notify()

    # --- HTTP -------------------------------------------------------------------------

    def app(self) -> web.Application:
        @web.middleware
        async def down(request, handler):
            if self.faults.api_down:
                resp = status(503, "ServiceUnavailable", "the server is currently unable to handle the request")
                self._record(request, resp.status)
                return resp
            if request.query.get("watch") in ("true", "1"):
                self._record(request, 200)  # a watch answers 200 at once, and streams on
                return await handler(request)
            resp = await handler(request)
            self._record(request, resp.status)
            return resp

        app = web.Application(middlewares=[down])
        r = app.router
        base = "/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        r.add_get(base + "/scale", self.get_scale)
        r.add_put(base + "/scale", self.write_scale)
        r.add_patch(base + "/scale", self.write_scale)
        r.add_get(base, self.get_deployment)
        r.add_patch("/api/v1/namespaces/{ns}/pods/{name}", self.patch_pod)
        r.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", self.endpointslices)
        r.add_get("/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers", self.list_hpas)
        r.add_get("/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects", self.list_scaled_objects)
        r.add_post("/api/v1/namespaces/{ns}/events", self.create_event)
        r.add_get("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", self.get_lease)
        r.add_post("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", self.create_lease)
        r.add_put("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", self.replace_lease)
        r.add_get("/api/v1/namespaces/{ns}/configmaps/{name}", self.get_configmap)
        r.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self.create_token_review)
        r.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self.create_access_review)
        return app

    async def get_configmap(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        data = self.configmaps.get(key)
        if data is None:
            return status(404, "NotFound", f'configmaps "{key[1]}" not found', {"name": key[1], "kind": "configmaps"})
        return web.json_response({"kind": "ConfigMap", "apiVersion": "v1",
                                  "metadata": {"name": key[1], "namespace": key[0], "uid": f"cm-{key[1]}",
                                               "resourceVersion": str(self.rv),
                                               "creationTimestamp": "2026-11-28T09:00:00Z"},
                                  "data": data})

    async def create_token_review(self, request: web.Request) -> web.Response:
        code, body = self.auth.token_review(await request.json())
        await asyncio.sleep(self.faults.review_delay_s)
        return web.json_response(body, status=code)

    async def create_access_review(self, request: web.Request) -> web.Response:
        code, body = self.auth.access_review(await request.json())
        await asyncio.sleep(self.faults.review_delay_s)
        return web.json_response(body, status=code)

    def _record(self, request: web.Request, status_code: int) -> None:
        call = api_call(request.method, request.path, dict(request.query), status_code)
        if call is not None:
            self.requests.append(call)

    def _deployment(self, request: web.Request) -> FakeDeployment | None:
        return self.deployments.get((request.match_info["ns"], request.match_info["name"]))

    def _not_found(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return status(404, "NotFound", f'deployments.apps "{name}" not found',
                      {"name": name, "group": "apps", "kind": "deployments"})

    def _scale(self, d: FakeDeployment) -> dict:
        spec = {"replicas": d.replicas} if d.replicas else {}
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": d.name, "namespace": d.namespace, "uid": d.uid,
                             "resourceVersion": str(d.rv), "creationTimestamp": "2026-11-28T09:58:02Z"},
                "spec": spec,
                "status": {"replicas": len([p for p in d.pods if not p.terminating]), "selector": f"app={d.name}"}}

    async def get_scale(self, request: web.Request) -> web.Response:
        d = self._deployment(request)
        return web.json_response(self._scale(d)) if d else self._not_found(request)

    def _injected_error(self, d: FakeDeployment, code: int) -> web.Response:
        reasons = {403: "Forbidden", 409: "Conflict", 429: "TooManyRequests", 500: "InternalError",
                   503: "ServiceUnavailable"}
        msg = (f'Operation cannot be fulfilled on deployments.apps "{d.name}": the object has been modified; '
               "please apply your changes to the latest version and try again") if code == 409 else "injected"
        resp = status(code, reasons.get(code, "Unknown"), msg, {"name": d.name, "group": "apps", "kind": "deployments"})
        if code in (429, 503) and self.faults.retry_after is not None:
            resp.headers["Retry-After"] = self.faults.retry_after
        return resp

    async def write_scale(self, request: web.Request) -> web.Response:
        d = self._deployment(request)
        if d is None:
            return self._not_found(request)
        if self.faults.scale_write_errors:
            return self._injected_error(d, self.faults.scale_write_errors.pop(0))
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        body = await request.json()
        if request.method == "PUT":
            if ctype != "application/json":
                return status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != str(d.rv):
                return status(409, "Conflict", f'Operation cannot be fulfilled on deployments.apps "{d.name}": '
                              "the object has been modified; please apply your changes to the latest version "
                              "and try again", {"name": d.name, "group": "apps", "kind": "deployments"})
            replicas = (body.get("spec") or {}).get("replicas", 0)
        elif ctype in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
            replicas = (body.get("spec") or {}).get("replicas", d.replicas)
        elif ctype == "application/json-patch+json":
            replicas = d.replicas
            for op in body:
                if op.get("path") == "/spec/replicas" and op.get("op") in ("replace", "add"):
                    replicas = op["value"]
        else:
            return status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
        if not isinstance(replicas, int) or replicas < 0:
            return status(422, "Invalid", f'Scale.autoscaling "{d.name}" is invalid: spec.replicas: Invalid value: '
                          f"{replicas}: must be greater than or equal to 0",
                          {"name": d.name, "group": "autoscaling", "kind": "Scale",
                           "causes": [{"reason": "FieldValueInvalid", "field": "spec.replicas",
                                       "message": f"Invalid value: {replicas}: must be greater than or equal to 0"}]})
        old_status = len([p for p in d.pods if not p.terminating])
        d.replicas = replicas
        d.rv = self.bump()
        self.scale_writes.append({"method": request.method, "replicas": replicas, "time": time.time()})
        self._reconcile(d)
        out = self._scale(d)
        out["status"]["replicas"] = old_status  # the reply still carries the old status
        if self.faults.scale_write_delay_s:
            # The write has landed; its answer is late (the client may have given up).
            await asyncio.sleep(self.faults.scale_write_delay_s)
        return web.json_response(out)

    def _pod(self, ns: str, name: str) -> tuple[FakeDeployment, FakePod] | None:
        for d in self.deployments.values():
            for p in d.pods:
                if d.namespace == ns and p.name == name:
                    return d, p
        return None

    async def patch_pod(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        found = self._pod(ns, name)
        if found is None:
            return status(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        d, pod = found
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        body = await request.json()
        if ctype in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
            for key, value in ((body.get("metadata") or {}).get("annotations") or {}).items():
                if value is None:
                    pod.annotations.pop(key, None)
                else:
                    pod.annotations[key] = value
        elif ctype == "application/json-patch+json":
            for op in body:
                prefix = "/metadata/annotations/"
                if op.get("op") in ("add", "replace") and op.get("path", "").startswith(prefix):
                    key = op["path"][len(prefix):].replace("~1", "/").replace("~0", "~")
                    pod.annotations[key] = op["value"]
        else:
            return status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
        self.bump()
        return web.json_response(self._pod_object(d, pod))

    def _pod_object(self, d: FakeDeployment, pod: FakePod) -> dict:
        ready = "True" if pod.ready and not pod.terminating else "False"
        return {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": pod.name, "namespace": d.namespace, "uid": pod.name,
                             "resourceVersion": str(self.rv), "labels": {"app": d.name},
                             "annotations": dict(pod.annotations)},
                "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.33.0"}]},
                "status": {"phase": "Running", "podIP": pod.ip,
                           "conditions": [{"type": "Ready", "status": ready, "lastProbeTime": None}]}}

    async def get_deployment(self, request: web.Request) -> web.Response:
        d = self._deployment(request)
        if d is None:
            return self._not_found(request)
        ready = sum(1 for p in d.pods if p.ready and not p.terminating)
        st = {"observedGeneration": 1, "replicas": len(d.pods), "updatedReplicas": len(d.pods)}
        if ready:
            st["readyReplicas"] = ready
            st["availableReplicas"] = ready
        return web.json_response({"kind": "Deployment", "apiVersion": "apps/v1",
                                  "metadata": {"name": d.name, "namespace": d.namespace, "uid": d.uid,
                                               "resourceVersion": str(d.rv)},
                                  "spec": {"replicas": d.replicas}, "status": st})

    def _matching(self, request: web.Request) -> list[FakeDeployment]:
        ns = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        name = selector.split("=", 1)[1] if selector.startswith("kubernetes.io/service-name=") else None
        return [d for (dns, dn), d in self.deployments.items() if dns == ns and (name is None or dn == name)]

    async def endpointslices(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") in ("true", "1")
        if not watch:
            items = [self._slice(d, False) for d in self._matching(request)]
            return web.json_response({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                      "metadata": {"resourceVersion": str(self.rv)}, "items": items})
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        since = int(request.query.get("resourceVersion") or 0)
        if 0 < since < self._compacted_rv:
            self.expired_watches += 1
            err = {"type": "ERROR", "object": status_body(410, "Expired",
                                                          f"too old resource version: {since} ({self.rv})")}
            await resp.write((json.dumps(err) + "\n").encode())
            return resp
        timeout = float(request.query.get("timeoutSeconds") or 300)
        deadline = time.monotonic() + timeout
        names = {d.name for d in self._matching(request)}
        epoch = self._watch_epoch
        sent = since
        if since == 0:
            for d in self._matching(request):
                await resp.write((json.dumps({"type": "ADDED", "object": self._slice(d, True)}) + "\n").encode())
            sent = self.rv
        try:
            while (time.monotonic() < deadline and not self.faults.api_down and not self._closing
                   and epoch == self._watch_epoch):
                changed = self._changed
                for rv, kind, obj in list(self._slice_events):
                    if rv > sent and obj["metadata"]["labels"]["kubernetes.io/service-name"] in names:
                        await resp.write((json.dumps({"type": kind, "object": obj}) + "\n").encode())
                        sent = rv
                with contextlib.suppress(asyncio.TimeoutError, ValueError):
                    await asyncio.wait_for(changed.wait(), timeout=min(1.0, deadline - time.monotonic()))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def list_hpas(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "HorizontalPodAutoscalerList", "apiVersion": "autoscaling/v2",
                                  "metadata": {"resourceVersion": str(self.rv)}, "items": self.hpas})

    async def list_scaled_objects(self, request: web.Request) -> web.Response:
        if self.scaled_objects is None:
            return web.Response(status=404, text="404 page not found")
        return web.json_response({"kind": "ScaledObjectList", "apiVersion": "keda.sh/v1alpha1",
                                  "metadata": {"resourceVersion": str(self.rv)}, "items": self.scaled_objects})

    async def create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        body.setdefault("metadata", {})["resourceVersion"] = str(self.bump())
        self.events.append(body)
        return web.json_response({"kind": "Event", "apiVersion": "v1", **body}, status=201)

    async def get_lease(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        lease = self.leases.get(key)
        if lease is None:
            return status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found',
                          {"name": key[1], "group": "coordination.k8s.io", "kind": "leases"})
        return web.json_response(lease)

    async def create_lease(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = (request.match_info["ns"], body["metadata"]["name"])
        if key in self.leases:
            return status(409, "AlreadyExists", f'leases.coordination.k8s.io "{key[1]}" already exists',
                          {"name": key[1], "group": "coordination.k8s.io", "kind": "leases"})
        body["metadata"]["resourceVersion"] = str(self.bump())
        body["metadata"]["namespace"] = key[0]
        lease = {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", **body}
        self.leases[key] = lease
        return web.json_response(lease, status=201)

    async def replace_lease(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = (request.match_info["ns"], request.match_info["name"])
        current = self.leases.get(key)
        if current is None:
            return status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return status(409, "Conflict", f'Operation cannot be fulfilled on leases.coordination.k8s.io "{key[1]}": '
                          "the object has been modified; please apply your changes to the latest version and try again",
                          {"name": key[1], "group": "coordination.k8s.io", "kind": "leases"})
        body["metadata"]["resourceVersion"] = str(self.bump())
        lease = {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", **body}
        self.leases[key] = lease
        return web.json_response(lease)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> str:
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self._changed = asyncio.Event()
            self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.loop is None:
            return

        self.faults = Faults()
        self._closing = True

        async def _shutdown():
            for d in self.deployments.values():
                for p in d.pods:
                    if p.server is not None:
                        await p.server[1].cleanup()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_shutdown(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)  # type: ignore[union-attr]


# --- driving the Kubernetes backend against the double --------------------------------


def fast_tuning(**retry: Any):
    """The backend's timings shortened for tests (watch streams of 5 s, quick backoff)."""
    from autoscaler.backends.kubernetes import Tuning
    from autoscaler.kube.endpointslices import WatchSettings
    from autoscaler.kube.scale import RetryPolicy

    policy = {"attempts": 4, "first_wait_s": 0.1, "max_wait_s": 2.0, "budget_s": 4.0, "request_timeout_s": 2.0}
    return Tuning(watch=WatchSettings(timeout_s=5, min_backoff_s=0.1, max_backoff_s=0.5, request_timeout_s=2.0),
                  retry=RetryPolicy(**{**policy, **retry}), sync_timeout_s=5.0)


def kubernetes_backend(double: KubeDouble, namespace: str = "llm", deployment: str = "vllm", **retry: Any):
    """A KubernetesBackend on the double's deployment, with fast_tuning; not started."""
    from autoscaler.backends.kubernetes import KubernetesBackend, KubernetesTarget

    target = KubernetesTarget(namespace=namespace, deployment=deployment, metrics_port=double.metrics_port,
                              api_url=f"http://127.0.0.1:{double.port}")
    return KubernetesBackend.from_config(target, "test", fast_tuning(**retry))


# --- helpers for tests driving a KubernetesBackend against the double ----------------------


async def wait_pods(backend, pred, timeout: float = 10.0) -> list:
    """The backend's pods once `pred(pods)` holds (or when `timeout` runs out)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        pods = await backend.pods()
        if pred(pods) or time.monotonic() > deadline:
            return pods
        await asyncio.sleep(0.05)


def ready(pods) -> int:
    from policies import ReplicaState

    return sum(p.state is ReplicaState.READY for p in pods)

