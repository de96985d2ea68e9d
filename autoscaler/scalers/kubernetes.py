"""Kubernetes scaler: the Deployment's scale subresource, through the official client.

* Reads `spec.replicas` (absent at 0) and `status.replicas`.
* Writes with PUT carrying the read resourceVersion, so a concurrent change is a 409, not
  a lost update; after a 409 it re-reads and writes only if the count still differs. 429
  and 5xx back off (1, 2, 4 s, honouring Retry-After) and retry; a write whose answer was
  lost is detected by the re-read. One decision never produces two successful writes.
* Before acting, looks for another owner of the Deployment (an HPA or a KEDA
  ScaledObject targeting it) and refuses, with a Warning Event, unless allowed.
* Records a Kubernetes Event on the Deployment for every scale.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from autoscaler.scalers.base import ScaleRefused

log = structlog.get_logger("qscale.k8s.scaler")

RETRYABLE = {429, 500, 502, 503, 504}


class KubernetesScaler:
    def __init__(self, api_client: client.ApiClient, namespace: str, deployment: str,
                 allow_other_owners: bool = False, identity: str = "qscale", attempts: int = 5,
                 owner_check_interval_s: float = 60.0, on_status=None, request_timeout_s: float = 10.0) -> None:
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.deployment = deployment
        self.allow_other_owners = allow_other_owners
        self.identity = identity
        self.attempts = attempts
        self.owner_check_interval_s = owner_check_interval_s
        self.on_status = on_status
        self.timeout = request_timeout_s
        self._owners: list[str] = []
        self._owners_checked = -1e18
        self._refusal_reported: tuple[str, ...] = ()
        self.writes = 0

    async def current_replicas(self) -> int:
        scale = await asyncio.to_thread(self.apps.read_namespaced_deployment_scale, self.deployment, self.namespace,
                                        _request_timeout=self.timeout)
        if self.on_status is not None and scale.status is not None:
            self.on_status(scale.status.replicas or 0)
        return (scale.spec.replicas if scale.spec is not None else None) or 0

    # --- other owners -----------------------------------------------------------------

    def _find_owners(self) -> list[str]:
        owners = []
        hpas = self.autoscaling.list_namespaced_horizontal_pod_autoscaler(self.namespace)
        for h in hpas.items or []:
            ref = h.spec.scale_target_ref
            if ref.kind == "Deployment" and ref.name == self.deployment:
                owners.append(f"HorizontalPodAutoscaler/{h.metadata.name}")
        try:
            objs = self.custom.list_namespaced_custom_object("keda.sh", "v1alpha1", self.namespace, "scaledobjects")
            for o in objs.get("items", []):
                ref = (o.get("spec") or {}).get("scaleTargetRef") or {}
                if ref.get("name") == self.deployment and ref.get("kind", "Deployment") == "Deployment":
                    owners.append(f"ScaledObject/{o['metadata']['name']}")
        except ApiException as exc:
            if exc.status != 404:  # 404: KEDA is not installed
                raise
        return owners

    async def _check_owners(self) -> None:
        if self.allow_other_owners:
            return
        if time.monotonic() - self._owners_checked >= self.owner_check_interval_s:
            self._owners = await asyncio.to_thread(self._find_owners)
            self._owners_checked = time.monotonic()
        if self._owners:
            msg = (f"not scaling: {', '.join(self._owners)} also targets deployment {self.deployment}; "
                   "remove it or set allow_other_owners")
            if tuple(self._owners) != self._refusal_reported:
                self._refusal_reported = tuple(self._owners)
                await self._event("ScaleRefused", msg, "Warning")
            raise ScaleRefused(msg)

    # --- writing ----------------------------------------------------------------------

    async def set_replicas(self, replicas: int, reason: str) -> None:
        await self._check_owners()
        delay = 1.0
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                scale = await asyncio.to_thread(self.apps.read_namespaced_deployment_scale, self.deployment,
                                                self.namespace, _request_timeout=self.timeout)
                current = (scale.spec.replicas if scale.spec is not None else None) or 0
                if current == replicas:
                    return  # already there (an earlier attempt landed, or someone agreed)
                body = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                        "metadata": {"name": self.deployment, "namespace": self.namespace,
                                     "resourceVersion": scale.metadata.resource_version},
                        "spec": {"replicas": replicas}}
                # Explicit: client 37 sends a PUT body with no Content-Type unless told.
                await asyncio.to_thread(self.apps.replace_namespaced_deployment_scale, self.deployment,
                                        self.namespace, body, _headers={"Content-Type": "application/json"},
                                        _request_timeout=self.timeout)
                self.writes += 1
                log.info("scaled", deployment=self.deployment, replicas_from=current, replicas_to=replicas,
                         reason=reason, attempt=attempt + 1)
                await self._event("Scaled", f"qscale scaled from {current} to {replicas}: {reason}", "Normal")
                return
            except ApiException as exc:
                last = exc
                if exc.status == 409:
                    continue  # re-read and try again
                if exc.status in RETRYABLE:
                    wait = delay
                    retry_after = (exc.headers or {}).get("Retry-After") if exc.headers else None
                    if retry_after and str(retry_after).isdigit():
                        wait = float(retry_after)
                    await asyncio.sleep(wait)
                    delay = min(delay * 2, 8.0)
                    continue
                raise
            except Exception as exc:  # timeouts, connection errors: re-read decides
                last = exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
        raise RuntimeError(f"scale write failed after {self.attempts} attempts: {last}")

    async def _event(self, reason: str, message: str, kind: str) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{self.deployment}.qscale.", "namespace": self.namespace},
            "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.deployment,
                               "namespace": self.namespace},
            "reason": reason, "message": message[:1024], "type": kind, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "qscale"}, "reportingComponent": "qscale", "reportingInstance": self.identity,
        }
        try:
            await asyncio.to_thread(self.core.create_namespaced_event, self.namespace, body)
        except Exception as exc:  # an event is best effort
            log.warning("could not record event", error=str(exc)[:200])

    async def close(self) -> None:
        return None
