"""Wiring for a Kubernetes target: API client, EndpointSlice discovery, scale-subresource scaler."""

from __future__ import annotations

import asyncio
import os
import socket

from kubernetes import client, config

from autoscaler.config import TargetConfig
from autoscaler.discovery.kubernetes import EndpointSliceDiscovery
from autoscaler.scalers.kubernetes import KubernetesScaler


def api_client(api_url: str | None = None) -> client.ApiClient:
    """`api_url` (tests, or an explicit proxy) else in-cluster config, else ~/.kube/config."""
    if api_url or os.environ.get("QSCALE_KUBE_API"):
        cfg = client.Configuration()
        cfg.host = api_url or os.environ["QSCALE_KUBE_API"]
        cfg.verify_ssl = False
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        cfg = client.Configuration.get_default_copy()
    # No hidden transport retries: urllib3 would resend a timed-out PUT on its own. The
    # scaler retries itself, after re-reading, so one decision is never written twice.
    cfg.retries = False
    return client.ApiClient(cfg)


def kubernetes_target(cfg: TargetConfig, identity: str | None = None):
    k = cfg.kubernetes
    assert k is not None
    api = api_client(k.api_url)
    discovery = EndpointSliceDiscovery(api, k.namespace, k.service or k.deployment, k.metrics_port, k.metrics_path)

    def on_status(replicas: int) -> None:
        discovery.pending_hint = replicas

    scaler = KubernetesScaler(api, k.namespace, k.deployment, k.allow_other_owners,
                              identity or socket.gethostname(), on_status=on_status)

    async def start() -> None:
        discovery.start()
        await asyncio.to_thread(discovery.synced.wait, 10)

    return discovery, scaler, [start]
