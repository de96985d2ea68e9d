"""What a request asks for, as Kubernetes' authorizers see it (apiserver's RequestInfo).

`/apis/{group}/{version}/namespaces/{ns}/{resource}[/{name}[/{subresource}]]` and the
cluster-scoped `/apis/{group}/{version}/{resource}[/{name}]` (and `/api/v1/...`) are resource
requests: a GET without a name is `list`, with one `get`. Everything else (discovery, /metrics,
/api/v1/targets of qscale's own API, /openapi) is a non-resource request on its path. So the
external metric `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/llm/inference_queue_depth`
is verb `list` on resource `inference_queue_depth` of group `external.metrics.k8s.io` in `llm`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kubernetes' own API prefixes (qscale's /api/v1/targets is its own, not a Kubernetes API).
API_GROUP_PREFIXES = ("apis",)

_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class ResourceAttributes:
    group: str
    version: str
    resource: str
    namespace: str = ""
    name: str = ""
    subresource: str = ""


@dataclass(frozen=True)
class RequestAttributes:
    verb: str
    path: str
    resource: ResourceAttributes | None = None  # None: a non-resource request on `path`


def _resource_parts(parts: list[str]) -> tuple[str, list[str]] | None:
    """(namespace, [resource, name?, subresource?]) after /apis/{group}/{version}, or None."""
    if parts[:1] == ["namespaces"] and len(parts) >= 3:
        return parts[1], parts[2:5]
    if parts and parts[0] != "namespaces":
        return "", parts[:3]
    return None


def request_attributes(method: str, path: str, watch: bool = False) -> RequestAttributes:
    verb = _VERBS.get(method.upper(), method.lower())
    parts = [p for p in path.split("/") if p]
    if len(parts) < 4 or parts[0] not in API_GROUP_PREFIXES:
        return RequestAttributes(verb, path)
    found = _resource_parts(parts[3:])
    if found is None:
        return RequestAttributes(verb, path)
    namespace, (resource, *rest) = found
    name = rest[0] if rest else ""
    if verb == "get" and not name:
        verb = "watch" if watch else "list"
    attrs = ResourceAttributes(parts[1], parts[2], resource, namespace, name, rest[1] if len(rest) > 1 else "")
    return RequestAttributes(verb, path, attrs)
