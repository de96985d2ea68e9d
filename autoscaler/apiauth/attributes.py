"""What a request asks for, as Kubernetes' authorizers see it (apiserver's RequestInfo).

Resource requests, under the API server's two prefixes:
* `/apis/{group}/{version}/namespaces/{ns}/{resource}[/{name}[/{subresource}]]` and the
  cluster-scoped `/apis/{group}/{version}/{resource}[/{name}[/{subresource}]]`;
* the legacy, groupless `/api/{version}/...`, the same with group "".
A GET without a name is `list` (`watch` with ?watch=true), with one `get`. Everything else
(discovery, /metrics, /openapi) is a non-resource request on its path.

So the external metric `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/llm/inference_queue_depth`
is verb `list` on resource `inference_queue_depth` of group `external.metrics.k8s.io` in `llm`,
and qscale's own `GET /api/v1/targets/vllm` is verb `get` on resource `targets`, name `vllm`, of
the core group "" at the cluster scope (`GET /api/v1/targets`: `list`). The targets API must
not be a non-resource URL: Kubernetes' `system:discovery` ClusterRole lets every authenticated
user GET `/api` and `/api/*`, so any pod's service-account token would read it. As a resource,
only a rule on `targets` in group "" allows it (a ClusterRole with a ClusterRoleBinding, e.g.
`resources: [targets], resourceNames: [vllm], verbs: [get]`); no built-in role grants that
resource but the wildcard ones (cluster-admin).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _group_version(parts: list[str]) -> tuple[str, str, list[str]] | None:
    """(group, version, what follows) under /apis/{group}/{version} or /api/{version}, or None."""
    if parts[:1] == ["apis"] and len(parts) >= 4:
        return parts[1], parts[2], parts[3:]
    if parts[:1] == ["api"] and len(parts) >= 3:
        return "", parts[1], parts[2:]  # the legacy core group
    return None


def _resource_parts(parts: list[str]) -> tuple[str, list[str]]:
    """(namespace, [resource, name?, subresource?]) after the group and version (non-empty)."""
    if parts[0] == "namespaces" and len(parts) >= 3:
        return parts[1], parts[2:5]
    if parts[0] == "namespaces":  # the namespaces resource itself: /namespaces[/{name}]
        return (parts[1] if len(parts) > 1 else ""), parts[:2]
    return "", parts[:3]


def request_attributes(method: str, path: str, watch: bool = False) -> RequestAttributes:
    verb = _VERBS.get(method.upper(), method.lower())
    under = _group_version([p for p in path.split("/") if p])
    if under is None:
        return RequestAttributes(verb, path)
    group, version, after = under
    namespace, (resource, *rest) = _resource_parts(after)
    name = rest[0] if rest else ""
    if verb == "get" and not name:
        verb = "watch" if watch else "list"
    attrs = ResourceAttributes(group, version, resource, namespace, name, rest[1] if len(rest) > 1 else "")
    return RequestAttributes(verb, path, attrs)
