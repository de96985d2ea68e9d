"""Kubernetes discovery: the EndpointSlices of the target's Service, listed then watched.

A background thread LISTs the slices (label `kubernetes.io/service-name`), then WATCHes
from the list's resourceVersion; on 410 Expired it re-lists, on other errors it backs off
(1 s doubling to 30 s). Endpoints map to pods: `terminating` -> DRAINING, `ready` ->
READY, otherwise STARTING (not ready yet). Pods without an IP are not in any slice: the
scaler's `status.replicas` tells how many exist, and the difference is reported as
STARTING placeholders, so capacity already ordered counts as in flight.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from autoscaler.discovery.base import Pod
from policies import ReplicaState

log = structlog.get_logger("qscale.k8s.discovery")


class EndpointSliceDiscovery:
    def __init__(self, api_client: client.ApiClient, namespace: str, service: str, metrics_port: int,
                 metrics_path: str = "/metrics", watch_timeout_s: int = 60) -> None:
        self.api = client.DiscoveryV1Api(api_client)
        self.namespace = namespace
        self.selector = f"kubernetes.io/service-name={service}"
        self.metrics_port = metrics_port
        self.metrics_path = metrics_path
        self.watch_timeout_s = watch_timeout_s
        self._slices: dict[str, Any] = {}
        self._first_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.synced = threading.Event()
        self.relists = 0
        self.errors = 0
        self.pending_hint = 0  # pods the Deployment has beyond those in slices (set by the scaler)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="endpointslice-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                listing = self.api.list_namespaced_endpoint_slice(self.namespace, label_selector=self.selector)
                with self._lock:
                    self._slices = {s.metadata.name: s for s in listing.items or []}
                self.synced.set()
                self.relists += 1
                rv = listing.metadata.resource_version
                w = watch.Watch()
                for event in w.stream(self.api.list_namespaced_endpoint_slice, self.namespace,
                                      label_selector=self.selector, resource_version=rv,
                                      allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout_s):
                    if self._stop.is_set():
                        w.stop()
                        break
                    kind, obj = event["type"], event["object"]
                    if kind in ("BOOKMARK", "ERROR"):
                        continue
                    with self._lock:
                        if kind == "DELETED":
                            self._slices.pop(obj.metadata.name, None)
                        else:
                            self._slices[obj.metadata.name] = obj
                backoff = 1.0
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch expired, re-listing", selector=self.selector)
                    continue
                self.errors += 1
                log.warning("endpointslice watch failed", status=exc.status, backoff_s=backoff)
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)
            except Exception as exc:  # connection refused, timeouts, API down
                self.errors += 1
                log.warning("endpointslice watch failed", error=type(exc).__name__, backoff_s=backoff)
                self._stop.wait(backoff)
                backoff = min(30.0, backoff * 2)

    async def pods(self) -> list[Pod]:
        now = time.time()
        pods: list[Pod] = []
        with self._lock:
            slices = list(self._slices.values())
        seen: set[str] = set()
        for s in slices:
            for ep in s.endpoints or []:
                ref = ep.target_ref
                name = ref.name if ref is not None else (ep.addresses or ["?"])[0]
                if name in seen:
                    continue
                seen.add(name)
                cond = ep.conditions
                ready = True if cond is None or cond.ready is None else cond.ready
                terminating = bool(cond is not None and cond.terminating)
                serving = True if cond is None or cond.serving is None else cond.serving
                started = self._first_seen.setdefault(name, now)
                if terminating:
                    state = ReplicaState.DRAINING
                elif ready:
                    state = ReplicaState.READY
                else:
                    state = ReplicaState.STARTING
                url = None
                if ep.addresses and (state is ReplicaState.READY or (state is ReplicaState.DRAINING and serving)):
                    url = f"http://{ep.addresses[0]}:{self.metrics_port}{self.metrics_path}"
                pods.append(Pod(name, state, started, url, None))
        live = sum(1 for p in pods if p.state is not ReplicaState.DRAINING)
        for i in range(max(0, self.pending_hint - live)):
            key = f"pending-{i}"
            pods.append(Pod(key, ReplicaState.STARTING, self._first_seen.setdefault(key, now), None))
        for key in [k for k in self._first_seen if k not in seen and not k.startswith("pending-")]:
            del self._first_seen[key]
        return pods
