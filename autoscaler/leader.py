"""Leader election on a coordination.k8s.io/v1 Lease, so two instances never both write.

Every `duration / 3` seconds each instance reads the Lease: the holder renews it; another
instance takes it over only once `renewTime + leaseDurationSeconds` has passed. Writes use
the Lease's resourceVersion, so two candidates racing for it cannot both win (one gets
409). An instance that cannot renew stops considering itself leader at its renew deadline,
two thirds of the lease duration after its last successful renewal began - before any
other instance may take the lease over (as client-go's RenewDeadline < LeaseDuration), so
clock skew of up to a third of the duration cannot make two leaders. Each request times
out after a renew period at most, so a hung API cannot stall the renewals. The standby
keeps running its loops (windows stay warm) but never writes, so a takeover acts on full
history.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import time
import uuid

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = structlog.get_logger("qscale.leader")


def _micro(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class LeaseElector:
    def __init__(self, api_client: client.ApiClient, namespace: str, name: str, identity: str | None = None,
                 duration_s: float = 15.0) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.duration_s = duration_s
        self.timeout_s = min(5.0, duration_s / 3)  # per request: at most one renew period
        self._valid_until = 0.0
        self._stop = asyncio.Event()
        self.transitions_seen = 0

    def is_leader(self) -> bool:
        return time.monotonic() < self._valid_until

    def _try(self) -> bool:
        now = time.time()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.duration_s),
                "renewTime": _micro(now)}
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": _micro(now), "leaseTransitions": 0}}
            try:
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout_s)
                return True
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
        holder = lease.spec.holder_identity
        renewed = _epoch(lease.spec.renew_time) or 0.0
        duration = lease.spec.lease_duration_seconds or self.duration_s
        transitions = lease.spec.lease_transitions or 0
        if holder != self.identity and renewed + duration > now:
            return False  # someone else holds a live lease
        new_spec = dict(spec)
        if holder == self.identity:
            new_spec["acquireTime"] = _micro(_epoch(lease.spec.acquire_time) or now)
            new_spec["leaseTransitions"] = transitions
        else:
            new_spec["acquireTime"] = _micro(now)
            new_spec["leaseTransitions"] = transitions + 1
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease.metadata.resource_version},
                "spec": new_spec}
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status == 409:
                return False  # lost the race
            raise
        if holder != self.identity:
            log.info("took the lease", identity=self.identity, previous=holder)
        return True

    async def run(self) -> None:
        period = self.duration_s / 3
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if await asyncio.to_thread(self._try):
                    self._valid_until = started + self.duration_s * 2 / 3
            except Exception as exc:  # API down: keep leadership only until the lease would expire
                log.warning("lease renewal failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=period)
        self._valid_until = 0.0

    def stop(self) -> None:
        self._stop.set()


async def run_with_leader_election(config) -> int:
    from autoscaler.kube.client import api_client
    from autoscaler.service import AutoscalerService

    api_url = next((t.kubernetes.api_url for t in config.targets if t.kubernetes is not None), None)
    elector = LeaseElector(api_client(api_url), config.lease_namespace, config.lease_name, config.identity,
                           config.lease_duration_s)
    service = AutoscalerService(config, is_leader=elector.is_leader)
    task = asyncio.ensure_future(elector.run())
    try:
        return await service.run()
    finally:
        elector.stop()
        await task
