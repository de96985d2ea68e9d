"""The EndpointSlices of the target's Service, listed then watched on a background thread.

The thread LISTs the slices (label `kubernetes.io/service-name`), then WATCHes from the
list's resourceVersion. When a watch ends (its `timeoutSeconds`, or the server closing it)
it resumes from the last resourceVersion seen, without listing again. Only a 410 Expired
(an ERROR event on the watch: the resourceVersion was compacted away) makes it re-LIST;
the re-list replaces the slices in one swap, so readers never see an empty interval.
Other failures (API down, connection refused) back off (doubling, capped) and resume.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from autoscaler.kube.errors import describe

log = structlog.get_logger("qscale.k8s.endpointslices")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One pod in the Service's slices, with its endpoint conditions (nil means true/false
    as the API defines: ready and serving default true, terminating false)."""

    name: str
    ip: str | None
    ready: bool
    serving: bool
    terminating: bool


@dataclass(frozen=True)
class WatchSettings:
    timeout_s: int = 300  # the server ends each watch after this; the thread resumes
    min_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    request_timeout_s: float = 10.0  # for LISTs (a watch waits up to timeout_s for events)


def _endpoint(ep: Any) -> Endpoint:
    ref = ep.target_ref
    ip = (ep.addresses or [None])[0]
    cond = ep.conditions
    return Endpoint(
        name=ref.name if ref is not None and ref.name else str(ip),
        ip=ip,
        ready=True if cond is None or cond.ready is None else bool(cond.ready),
        serving=True if cond is None or cond.serving is None else bool(cond.serving),
        terminating=bool(cond is not None and cond.terminating),
    )


class EndpointSliceWatch:
    def __init__(self, api_client: client.ApiClient, namespace: str, service: str,
                 settings: WatchSettings | None = None) -> None:
        self.api = client.DiscoveryV1Api(api_client)
        self.namespace = namespace
        self.selector = f"kubernetes.io/service-name={service}"
        self.settings = settings or WatchSettings()
        self.synced = threading.Event()  # set once the first LIST has landed
        self.relists = 0  # LISTs done: the first, then one per 410 (or failed LIST)
        self.expired = 0  # 410 Expired answers seen on a watch
        self.errors = 0  # other failures (each followed by a backoff)
        self._slices: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resp: Any = None  # the open watch response, so close() can cut it
        self._rv: str | None = None  # where the next watch resumes; None: LIST first
        self._listed_rv: str | None = None  # the last LIST's resourceVersion
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="endpointslice-watch", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread: cut the open watch (it would otherwise wait for events) and join."""
        self._stop.set()
        with self._lock:
            resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def endpoints(self) -> list[Endpoint]:
        """The endpoints in the last known slices, one per pod (slices may overlap)."""
        with self._lock:
            slices = list(self._slices.values())
        seen: dict[str, Endpoint] = {}
        for s in slices:
            for ep in s.endpoints or []:
                e = _endpoint(ep)
                seen.setdefault(e.name, e)
        return list(seen.values())

    def _run(self) -> None:
        backoff = self.settings.min_backoff_s
        while not self._stop.is_set():
            try:
                if self._rv is None:
                    self._rv = self._list()
                self._watch(self._rv)
                backoff = self.settings.min_backoff_s
            except ApiException as exc:
                if exc.status == 410:
                    self.expired += 1
                    log.info("watch expired, re-listing", selector=self.selector, reason=exc.reason)
                    if self._rv == self._listed_rv:  # expired at once after a LIST: do not spin
                        backoff = self._failed("410 right after a LIST", backoff)
                    self._rv = None
                    continue
                backoff = self._failed(describe(exc), backoff)
            except Exception as exc:  # connection refused, timeouts, a cut stream
                backoff = self._failed(describe(exc), backoff)

    def _failed(self, why: str, backoff: float) -> float:
        if self._stop.is_set():
            return backoff
        self.errors += 1
        log.warning("endpointslice watch failed", selector=self.selector, error=why, backoff_s=backoff)
        self._stop.wait(backoff)
        return min(self.settings.max_backoff_s, backoff * 2)

    def _list(self) -> str:
        listing = self.api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.selector, _request_timeout=self.settings.request_timeout_s)
        slices = {s.metadata.name: s for s in listing.items or []}
        with self._lock:
            self._slices = slices
        self.relists += 1
        self.synced.set()
        self._listed_rv = str(listing.metadata.resource_version)
        return self._listed_rv

    def _watch(self, rv: str) -> None:
        """Apply events from `rv` until the stream ends, keeping the resourceVersion reached
        (events and BOOKMARKs), so a broken stream resumes where it was."""
        w = watch.Watch(return_type="V1EndpointSlice")  # _open hides the type from Watch
        # The server ends the stream after timeout_s; a read timeout a little later only
        # fires on a connection that died silently.
        timeouts = (self.settings.request_timeout_s, self.settings.timeout_s + 15)
        for event in w.stream(self._open, self.namespace, label_selector=self.selector, resource_version=rv,
                              allow_watch_bookmarks=True, timeout_seconds=self.settings.timeout_s,
                              _request_timeout=timeouts):
            if self._stop.is_set():
                w.stop()
                break
            kind, obj = event["type"], event["object"]
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                with self._lock:
                    if kind == "DELETED":
                        self._slices.pop(obj.metadata.name, None)
                    else:
                        self._slices[obj.metadata.name] = obj
            self._rv = str(w.resource_version or self._rv)

    def _open(self, *args: Any, **kwargs: Any) -> Any:
        """The LIST call, keeping the streaming response so close() can shut it."""
        resp = self.api.list_namespaced_endpoint_slice(*args, **kwargs)
        with self._lock:
            self._resp = resp
        if self._stop.is_set():
            resp.shutdown()
        return resp
