"""The official Kubernetes client, configured once: an explicit URL, in-cluster, or kubeconfig."""

from __future__ import annotations

import os

from kubernetes import client, config


def api_client(api_url: str | None = None) -> client.ApiClient:
    """`api_url` (tests, or an explicit proxy), else $QSCALE_KUBE_API, else in-cluster config,
    else ~/.kube/config."""
    url = api_url or os.environ.get("QSCALE_KUBE_API")
    if url:
        cfg = client.Configuration()
        cfg.host = url
        cfg.verify_ssl = False
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        cfg = client.Configuration.get_default_copy()
    # No hidden transport retries: urllib3 would resend a timed-out PUT on its own. The
    # backend retries itself, after re-reading, so one decision is never written twice.
    cfg.retries = False
    return client.ApiClient(cfg)
