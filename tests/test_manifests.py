"""Manifests: every resource a kustomization lists exists and validates against the real
Kubernetes schemas (kubernetes-validate); the embedded qscale config is valid; the qscale pod
meets Pod Security "restricted"; RBAC grants exactly the API calls the code makes."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from autoscaler.config import AutoscalerConfig

ROOT = Path(__file__).resolve().parents[1] / "manifests"
K8S_VERSION = "1.30"


def kustomizations() -> list[Path]:
    return sorted(ROOT.rglob("kustomization.yaml"))


def documents():
    for k in kustomizations():
        spec = yaml.safe_load(k.read_text())
        for res in spec["resources"]:
            path = k.parent / res
            assert path.is_file(), f"{k}: resource {res} is missing"
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    yield pytest.param(doc, id=f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}")


def test_there_are_kustomizations():
    assert {p.parent.name for p in kustomizations()} >= {"base", "vllm"}


@pytest.mark.parametrize("doc", list(documents()))
def test_resource_validates_against_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_can_fail():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_embedded_config_is_valid():
    cm = yaml.safe_load((ROOT / "base" / "configmap.yaml").read_text())
    cfg = AutoscalerConfig(**yaml.safe_load(cm["data"]["qscale.yaml"]))
    assert cfg.leader_election and cfg.targets[0].backend == "kubernetes"


def base_documents() -> list[dict]:
    spec = yaml.safe_load((ROOT / "base" / "kustomization.yaml").read_text())
    return [doc for res in spec["resources"] for doc in yaml.safe_load_all((ROOT / "base" / res).read_text()) if doc]


def the(kind: str, name: str) -> dict:
    (doc,) = [d for d in base_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def embedded_config() -> AutoscalerConfig:
    cm = the("ConfigMap", "qscale-config")
    return AutoscalerConfig(**yaml.safe_load(cm["data"]["qscale.yaml"]))


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"}


@pytest.mark.parametrize("kustomization", kustomizations(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_kustomize_namespace_moves_nothing(kustomization):
    """kustomize's `namespace:` rewrites every namespaced resource; one in another namespace
    (the target's Role, a kube-system RoleBinding) would silently land in the wrong place."""
    spec = yaml.safe_load(kustomization.read_text())
    if "namespace" not in spec:
        return
    for res in spec["resources"]:
        for doc in yaml.safe_load_all((kustomization.parent / res).read_text()):
            if doc and doc["kind"] not in CLUSTER_SCOPED:
                assert doc["metadata"].get("namespace") == spec["namespace"], (res, doc["metadata"]["name"])


# --- Pod Security "restricted" ----------------------------------------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _containers(spec: dict) -> list[dict]:
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(key) or []]


def _pod_level_violations(spec: dict) -> list[str]:
    out = [f"{k} must not be true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: type {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    psc = spec.get("securityContext") or {}
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser must not be 0")
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("pod seccompProfile must not be Unconfined")
    return out


def _container_violations(c: dict, psc: dict) -> list[str]:
    sc, name = c.get("securityContext") or {}, c["name"]
    out = []
    if sc.get("privileged"):
        out.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{name}: allowPrivilegeEscalation must be false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        out.append(f"{name}: capabilities must drop ALL")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        out.append(f"{name}: capabilities may only add NET_BIND_SERVICE")
    if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        out.append(f"{name}: runAsNonRoot must be true (pod or container)")
    if sc.get("runAsUser") == 0:
        out.append(f"{name}: runAsUser must not be 0")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
    if any(p.get("hostPort") for p in c.get("ports") or []):
        out.append(f"{name}: hostPort")
    return out


def restricted_violations(spec: dict) -> list[str]:
    """What the Pod Security "restricted" profile (which includes "baseline") refuses in a pod spec."""
    psc = spec.get("securityContext") or {}
    return _pod_level_violations(spec) + [v for c in _containers(spec) for v in _container_violations(c, psc)]


def qscale_pod_spec() -> dict:
    return the("Deployment", "qscale")["spec"]["template"]["spec"]


def test_the_qscale_pod_meets_pod_security_restricted():
    assert restricted_violations(qscale_pod_spec()) == []


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: s["securityContext"].pop("seccompProfile"), "seccompProfile must be RuntimeDefault"),
    (lambda s: s["securityContext"].update(seccompProfile={"type": "Unconfined"}), "Unconfined"),
    (lambda s: s["securityContext"].pop("runAsNonRoot"), "runAsNonRoot must be true"),
    (lambda s: s["securityContext"].update(runAsUser=0), "runAsUser must not be 0"),
    (lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    (lambda s: s["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}), "drop ALL"),
    (lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "only add"),
    (lambda s: s["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    (lambda s: s.update(hostNetwork=True), "hostNetwork"),
    (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
])
def test_the_restricted_check_catches_each_rule(change, expected):
    spec = qscale_pod_spec()
    change(spec)
    assert any(expected in v for v in restricted_violations(spec)), restricted_violations(spec)


def test_probes_liveness_on_healthz_readiness_on_readyz():
    (c,) = qscale_pod_spec()["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


# --- RBAC: exactly what the code uses ---------------------------------------------------------


def granted_rules() -> list[tuple[str, dict]]:
    """(namespace, rule) for every rule bound to the qscale ServiceAccount; namespace "*" for a
    ClusterRoleBinding. A role not defined in the manifests is a rule granting `?` (unknown)."""
    docs = base_documents()
    sa = the("ServiceAccount", "qscale")["metadata"]
    roles = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d["rules"]
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    out: list[tuple[str, dict]] = []
    for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa["name"] and s["namespace"] == sa["namespace"]
                   for s in b["subjects"]):
            continue
        scope = b["metadata"]["namespace"] if b["kind"] == "RoleBinding" else "*"
        ref = b["roleRef"]
        key = (ref["kind"], scope if ref["kind"] == "Role" else "", ref["name"])
        unknown = [{"apiGroups": ["?"], "resources": [f"{ref['kind']} {ref['name']}"], "verbs": ["?"]}]
        out.extend((scope, rule) for rule in roles.get(key, unknown))
    return out


def allows(scope: str, rule: dict, call) -> bool:
    """RBAC's rule match; create, list and watch name no object, so resourceNames never match them."""
    names = rule.get("resourceNames")
    return (scope in ("*", call.namespace) and call.group in rule["apiGroups"] and call.resource in rule["resources"]
            and call.verb in rule["verbs"] and (not names or (call.name != "" and call.name in names)))


def record_a_full_run():
    """Every API call of a KubernetesBackend run (start, read, scale up, scale down with
    remove_first, close) and of leader election, for the target and Lease in configmap.yaml."""
    from autoscaler.backends.kubernetes import KubernetesBackend, KubernetesTarget
    from autoscaler.kube.client import api_client
    from autoscaler.leader import LeaseElector
    from policies import ReplicaState
    from tests.k8s_double import KubeDouble, fast_tuning
    from tests.servers import free_port

    cfg = embedded_config()
    k = cfg.targets[0].kubernetes
    double = KubeDouble(cold_start_s=0.2, metrics_port=free_port())
    url = double.start()
    double.add_deployment(k.namespace, k.deployment, 2)

    async def until_ready(b, n):
        for _ in range(200):
            if sum(p.state is ReplicaState.READY for p in await b.pods()) == n:
                return await b.pods()
            await asyncio.sleep(0.05)
        raise AssertionError(f"{n} pods not ready")

    async def scenario():
        target = KubernetesTarget(**{**k.model_dump(), "api_url": url})
        b = KubernetesBackend.from_config(target, "rbac-test", fast_tuning())
        await b.start()
        await until_ready(b, 2)
        await b.current_replicas()
        await b.set_replicas(3, "up")
        pods = await until_ready(b, 3)
        await b.set_replicas(2, "down", remove_first=[pods[0].name])
        await b.close()
        elector = LeaseElector(api_client(url), cfg.lease_namespace, cfg.lease_name, "rbac-test", duration_s=3)
        task = asyncio.ensure_future(elector.run())
        await asyncio.sleep(1.3)  # create, then one renewal (get + update)
        elector.stop()
        await task

    try:
        asyncio.run(asyncio.wait_for(scenario(), 20))
    finally:
        double.stop()
    return double.requests


def test_rbac_grants_exactly_the_calls_the_code_makes():
    calls = record_a_full_run()
    used = {(c.group, c.resource, c.verb) for c in calls}
    assert used == {("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
                    ("apps", "deployments/scale", "get"), ("apps", "deployments/scale", "update"),
                    ("", "events", "create"), ("", "pods", "patch"),
                    ("autoscaling", "horizontalpodautoscalers", "list"), ("keda.sh", "scaledobjects", "list"),
                    ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
                    ("coordination.k8s.io", "leases", "update")}
    rules = granted_rules()
    missing = sorted({(c.namespace, c.group, c.resource, c.verb, c.name) for c in calls
                      if not any(allows(scope, r, c) for scope, r in rules)})
    assert missing == [], f"the code makes calls RBAC does not grant: {missing}"
    extra = []
    for scope, r in rules:
        for group, resource, verb in itertools.product(r["apiGroups"], r["resources"], r["verbs"]):
            for name in r.get("resourceNames") or [None]:
                rule = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                if name is not None:
                    rule["resourceNames"] = [name]
                if not any(allows(scope, rule, c) for c in calls):
                    extra.append((scope, group, resource, verb, name))
    assert extra == [], f"RBAC grants what the code never uses: {extra}"


def test_rules_on_named_objects_are_restricted_to_those_names():
    """get/update on the target's scale and on the Lease name their object; pods are the
    exception (a ReplicaSet names them), and create/list/watch cannot be restricted by name."""
    for scope, r in granted_rules():
        if set(r["verbs"]) & {"get", "update", "delete"}:
            assert r.get("resourceNames"), (scope, r)


def test_no_cluster_wide_rbac():
    kinds = {d["kind"] for d in base_documents()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_the_deployment_runs_as_the_bound_service_account():
    sa = the("ServiceAccount", "qscale")["metadata"]
    assert qscale_pod_spec()["serviceAccountName"] == sa["name"]
    assert the("Deployment", "qscale")["metadata"]["namespace"] == sa["namespace"]
    assert {scope for scope, _ in granted_rules()} == {embedded_config().targets[0].kubernetes.namespace,
                                                       sa["namespace"]}
