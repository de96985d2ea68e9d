"""Which pods a scale-down removes: the `controller.kubernetes.io/pod-deletion-cost` annotation.

The ReplicaSet controller, choosing pods to delete, takes unscheduled, then pending, then
not-ready pods first; among the rest, the lowest deletion cost goes first (beta, on by default
since Kubernetes 1.22). Annotating the pods to remove with a low cost just before lowering
spec.replicas makes those go. The annotation stays on a pod that survives (a failed write);
it then goes first at the next scale-down, which is what was asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from kubernetes import client

from autoscaler.kube.errors import describe

log = structlog.get_logger("qscale.k8s.deletion_cost")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


class DeletionCost:
    def __init__(self, api_client: client.ApiClient, namespace: str, cost: int = -1000,
                 request_timeout_s: float = 2.0) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.cost = cost
        self.timeout = request_timeout_s

    async def mark(self, names: Sequence[str]) -> list[str]:
        """Annotate `names`; the ones that were marked. Best effort: failures are logged."""
        return await asyncio.to_thread(self._mark, list(names))

    def _mark(self, names: list[str]) -> list[str]:
        body = {"metadata": {"annotations": {DELETION_COST: str(self.cost)}}}
        marked = []
        for name in names:
            try:  # a dict body goes as a strategic merge patch
                self.core.patch_namespaced_pod(name, self.namespace, body, _request_timeout=self.timeout)
                marked.append(name)
            except Exception as exc:
                log.warning("could not set the pod deletion cost", pod=name, error=describe(exc))
        return marked
