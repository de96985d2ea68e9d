"""The Kubernetes backend: a Deployment's replicas, found through its Service's EndpointSlices
and scaled through its scale subresource, with the official client.

* Pods: the EndpointSlices, listed then watched on a thread (autoscaler/kube/endpointslices.py),
  plus STARTING placeholders for pods that exist (the Deployment's status.replicas, from the
  backend's own last scale read) but have no IP yet (autoscaler/kube/pods.py).
* Scaling: the scale subresource, PUT with the read resourceVersion and bounded retries
  (autoscaler/kube/scale.py); refused while an HPA or KEDA ScaledObject also targets the
  Deployment; an Event on the Deployment for each scale. On a scale-down the pods named in
  `remove_first` get a low `controller.kubernetes.io/pod-deletion-cost` first, so the
  ReplicaSet removes them before healthy ones.

RBAC (manifests/components/scaler/rbac.yaml for the writes, manifests/base/rbac.yaml for the reads): deployments/scale get+update, endpointslices list+watch,
pods patch, events create, horizontalpodautoscalers and keda.sh scaledobjects list.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from kubernetes import client
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autoscaler.backends.base import Pod, ScaleRefused
from autoscaler.kube.client import api_client
from autoscaler.kube.deletion_cost import DeletionCost
from autoscaler.kube.endpointslices import EndpointSliceWatch, WatchSettings
from autoscaler.kube.errors import describe
from autoscaler.kube.events import EventRecorder
from autoscaler.kube.names import check_name
from autoscaler.kube.owners import OwnerCheck
from autoscaler.kube.pods import PodTracker
from autoscaler.kube.scale import RetryPolicy, Scale, ScaleClient, ScaleFailed

log = structlog.get_logger("qscale.k8s")


class KubernetesTarget(BaseModel):
    """The `kubernetes:` section of a target."""

    model_config = ConfigDict(extra="forbid")
    namespace: str = "default"
    deployment: str
    service: str | None = None  # EndpointSlices of this Service (default: the deployment name)
    metrics_port: int = Field(8000, gt=0, lt=65536)
    metrics_path: str = "/metrics"
    allow_other_owners: bool = False  # act even if an HPA or ScaledObject targets the deployment
    api_url: str | None = None  # default: in-cluster config, else ~/.kube/config

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return check_name("namespace", v, "label")

    @field_validator("deployment")
    @classmethod
    def _deployment(cls, v: str) -> str:
        return check_name("deployment", v, "subdomain")

    @field_validator("service")
    @classmethod
    def _service(cls, v: str | None) -> str | None:
        return None if v is None else check_name("service", v, "dns1035")

    @field_validator("metrics_path")
    @classmethod
    def _metrics_path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() or c in "?#" for c in v):
            raise ValueError(f"metrics_path {v[:80]!r} must be a URL path starting with '/'")
        return v


@dataclass(frozen=True)
class Tuning:
    """Timings; the defaults suit a cluster, tests shorten them."""

    watch: WatchSettings = field(default_factory=WatchSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    owner_check_interval_s: float = 60.0
    sync_timeout_s: float = 10.0  # start() waits this long for the first LIST


class KubernetesBackend:
    def __init__(self, api: client.ApiClient, target: KubernetesTarget, identity: str,
                 tuning: Tuning | None = None) -> None:
        self.target = target
        self.tuning = tuning or Tuning()
        ns, name = target.namespace, target.deployment
        self.watch = EndpointSliceWatch(api, ns, target.service or name, self.tuning.watch)
        self.scale = ScaleClient(api, ns, name, self.tuning.retry)
        self.owners = OwnerCheck(api, ns, name, self.tuning.owner_check_interval_s)
        self.events = EventRecorder(api, ns, name, identity)
        self.deletion_cost = DeletionCost(api, ns)
        self._tracker = PodTracker(target.metrics_port, target.metrics_path)
        self._refusal_reported: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: KubernetesTarget, identity: str | None = None,
                    tuning: Tuning | None = None) -> KubernetesBackend:
        return cls(api_client(cfg.api_url), cfg, identity or socket.gethostname(), tuning)

    @property
    def where(self) -> str:
        return f"deployment {self.target.namespace}/{self.target.deployment}"

    async def start(self) -> None:
        """Start the watch; wait (bounded) for its first LIST and read the scale once."""
        self.watch.start()
        if not await asyncio.to_thread(self.watch.synced.wait, self.tuning.sync_timeout_s):
            log.warning("endpointslices not listed yet; starting without pods", target=self.where)
        try:
            await self.scale.read()
        except Exception as exc:
            log.warning("could not read the scale yet", target=self.where, error=describe(exc))

    async def pods(self) -> list[Pod]:
        """The last known pods (kept while the API is unreachable). Pods beyond spec.replicas
        are on their way out, not starting: they make no placeholders."""
        last = self.scale.last
        existing = min(last.status_replicas, last.replicas) if last is not None else 0
        return self._tracker.pods(self.watch.endpoints(), existing, time.time())

    async def current_replicas(self) -> int:
        try:
            return (await self.scale.read()).replicas
        except Exception as exc:
            raise ScaleFailed(f"cannot read the scale of {self.where}: {describe(exc)}") from None

    async def set_replicas(self, replicas: int, reason: str, remove_first: Sequence[str] = ()) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        await self._check_owners()

        async def prepare(scale: Scale) -> None:
            await self._mark_for_removal(scale.replicas - replicas, remove_first)

        before = await self.scale.set(replicas, prepare)
        if before is None:
            return
        log.info("scaled", target=self.where, replicas_from=before.replicas, replicas_to=replicas, reason=reason)
        await self.events.record("Scaled", f"qscale scaled from {before.replicas} to {replicas}: {reason}")

    def router_waiting(self) -> float:
        return 0.0  # no hold queue in front of the pods: a Service balances them

    async def close(self) -> None:
        await asyncio.to_thread(self.watch.close)

    async def _check_owners(self) -> None:
        if self.target.allow_other_owners:
            return
        owners = await self.owners.owners()
        if not owners:
            return
        msg = (f"not scaling: {', '.join(owners)} also targets {self.where}; "
               "remove it or set allow_other_owners")
        if tuple(owners) != self._refusal_reported:
            self._refusal_reported = tuple(owners)
            await self.events.record("ScaleRefused", msg, "Warning")
        raise ScaleRefused(msg)

    async def _mark_for_removal(self, removing: int, names: Sequence[str]) -> None:
        """Give the first `removing` of `names` that are live pods a low deletion cost."""
        if removing <= 0 or not names:
            return
        live = {e.name for e in self.watch.endpoints() if not e.terminating}
        chosen = [n for n in dict.fromkeys(names) if n in live][:removing]
        if chosen:
            marked = await self.deletion_cost.mark(chosen)
            log.info("pods to remove first", target=self.where, pods=marked)
