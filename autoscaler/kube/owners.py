"""Another owner of the Deployment: an HPA or a KEDA ScaledObject that targets it.

Two controllers writing one replica count fight; the backend refuses to act while another
owner exists (unless told otherwise). The answer is cached for `interval_s`; if a refresh
fails, the last answer stands, and with no answer yet the failure is raised (one line).
"""

from __future__ import annotations

import asyncio
import time

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from autoscaler.kube.errors import describe

log = structlog.get_logger("qscale.k8s.owners")


class OwnerCheck:
    def __init__(self, api_client: client.ApiClient, namespace: str, deployment: str,
                 interval_s: float = 60.0, request_timeout_s: float = 5.0) -> None:
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.deployment = deployment
        self.interval_s = interval_s
        self.timeout = request_timeout_s
        self._owners: list[str] | None = None
        self._checked = -1e18

    async def owners(self) -> list[str]:
        """`Kind/name` of every other owner, e.g. `HorizontalPodAutoscaler/vllm`."""
        if self._owners is not None and time.monotonic() - self._checked < self.interval_s:
            return self._owners
        try:
            self._owners = await asyncio.to_thread(self._find)
            self._checked = time.monotonic()
        except Exception as exc:
            if self._owners is None:
                raise RuntimeError(f"cannot check for other owners of deployment {self.namespace}/"
                                   f"{self.deployment}: {describe(exc)}") from None
            log.warning("owner check failed, keeping the last answer", error=describe(exc))
        return self._owners

    def _find(self) -> list[str]:
        owners = []
        hpas = self.autoscaling.list_namespaced_horizontal_pod_autoscaler(self.namespace,
                                                                          _request_timeout=self.timeout)
        for h in hpas.items or []:
            ref = h.spec.scale_target_ref
            if ref.kind == "Deployment" and ref.name == self.deployment:
                owners.append(f"HorizontalPodAutoscaler/{h.metadata.name}")
        try:
            objs = self.custom.list_namespaced_custom_object("keda.sh", "v1alpha1", self.namespace, "scaledobjects",
                                                             _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 404:  # 404: KEDA is not installed
                raise
            return owners
        for o in objs.get("items") or []:
            ref = (o.get("spec") or {}).get("scaleTargetRef") or {}
            if ref.get("name") == self.deployment and ref.get("kind", "Deployment") == "Deployment":
                owners.append(f"ScaledObject/{o['metadata']['name']}")
        return owners
