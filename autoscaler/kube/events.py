"""Kubernetes Events on the target Deployment (`kubectl describe deployment` shows them)."""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog
from kubernetes import client

from autoscaler.kube.errors import describe

log = structlog.get_logger("qscale.k8s.events")


class EventRecorder:
    def __init__(self, api_client: client.ApiClient, namespace: str, deployment: str, identity: str,
                 request_timeout_s: float = 2.0) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.deployment = deployment
        self.identity = identity
        self.timeout = request_timeout_s

    async def record(self, reason: str, message: str, kind: str = "Normal") -> None:
        """Best effort: a failure is logged, never raised."""
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
            await asyncio.to_thread(self.core.create_namespaced_event, self.namespace, body,
                                    _request_timeout=self.timeout)
        except Exception as exc:
            log.warning("could not record event", reason=reason, error=describe(exc))
