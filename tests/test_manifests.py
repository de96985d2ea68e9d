"""Manifests: every overlay renders (`kubectl kustomize`, as `kubectl apply -k` does) and each
resource validates against the real Kubernetes schemas (kubernetes-validate: 1.30 and the newest
it ships); the resources of CRDs (KEDA, cert-manager, Prometheus Operator) against the fields
their CRDs require and allow, written down here by hand (no CRD schema is vendored); each
overlay's mode is what it says (who writes the replica count, which HPA or ScaledObject, an HPA
following qscale takes any jump at once); the APIService carries a caBundle (cert-manager's
injection or scripts/apiservice-cabundle), never insecureSkipTLSVerify; the monitors scrape
qscale over verified HTTPS with a token and the vLLM pods; the qscale pod meets Pod Security
"restricted"; the vLLM example drains; and each overlay's RBAC grants exactly the API calls the
code makes in that mode."""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from autoscaler.config import AutoscalerConfig

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
SCRIPT = ROOT / "scripts" / "apiservice-cabundle"
# The oldest Kubernetes the manifests claim, and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
MODES = ("direct", "hpa", "hpa-follow", "shadow", "keda")
OVERLAYS = (*MODES, "observability")
EXAMPLES = ("vllm", "tune")
SHADOW = {"direct": False, "hpa": True, "hpa-follow": True, "shadow": True, "keda": True}


def kubectl() -> str:
    binary = shutil.which("kubectl")
    assert binary, "kubectl (with its kustomize) is not installed"
    return binary


@functools.cache
def render(path: Path) -> tuple[dict, ...]:
    """What `kubectl apply -k path` would send."""
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, f"{path.relative_to(ROOT)} does not render: {out.stderr.strip()}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


@functools.cache
def render_with_script(overlay: str) -> tuple[dict, ...]:
    """The overlay as scripts/apiservice-cabundle installs it on a cluster without cert-manager."""
    out = subprocess.run([str(SCRIPT), "--print", str(MANIFESTS / "overlays" / overlay)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def overlay(name: str) -> tuple[dict, ...]:
    return render(MANIFESTS / "overlays" / name)


def kustomize_dirs() -> list[Path]:
    return [MANIFESTS / "overlays" / o for o in OVERLAYS] + [MANIFESTS / "examples" / e for e in EXAMPLES]


def the(docs, kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_every_kustomization_is_an_overlay_a_component_base_or_example():
    """Nothing is left out of the tests: every kustomization.yaml is rendered here or used by one."""
    found = {p.parent.relative_to(MANIFESTS).as_posix() for p in MANIFESTS.rglob("kustomization.yaml")}
    components = {p for p in found if p.startswith("components/")}
    assert found - components == {"base"} | {f"overlays/{o}" for o in OVERLAYS} | {f"examples/{e}" for e in EXAMPLES}
    used = {c for c in components for o in OVERLAYS if f"../../{c}" in (MANIFESTS / "overlays" / o /
                                                                         "kustomization.yaml").read_text()}
    assert used == components


# --- every resource validates ------------------------------------------------------------------


# The fields the overlays use of each CRD kind, written down from the CRDs (KEDA 2.x
# keda.sh/v1alpha1, cert-manager 1.x cert-manager.io/v1, Prometheus Operator
# monitoring.coreos.com/v1): what they require, and nothing they do not define (the API server
# would drop an unknown field, or refuse it under strict field validation).
def _obj(required: list[str], props: dict, closed: bool = True) -> dict:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": not closed}


STR = {"type": "string"}
INT = {"type": "integer"}
STR_LIST = {"type": "array", "items": STR}
META = _obj(["name"], {"name": STR, "namespace": STR, "labels": {"type": "object"},
                       "annotations": {"type": "object"}})
ISSUER_REF = _obj(["name"], {"name": STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": STR})
ISSUER_SPEC = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
               "properties": {"selfSigned": {"type": "object"}, "ca": _obj(["secretName"], {"secretName": STR}),
                              "acme": {"type": "object"}, "vault": {"type": "object"},
                              "venafi": {"type": "object"}}}
RULE = {"type": "object", "required": ["expr"], "additionalProperties": False,
        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
        "properties": {"record": STR, "alert": STR, "expr": STR, "for": STR, "keep_firing_for": STR,
                       "labels": {"type": "object", "additionalProperties": STR},
                       "annotations": {"type": "object", "additionalProperties": STR}}}
LABEL_SELECTOR = _obj([], {"matchLabels": {"type": "object", "additionalProperties": STR},
                           "matchExpressions": {"type": "array", "items": {"type": "object"}}})
SECRET_KEY = _obj(["key"], {"name": STR, "key": STR, "optional": {"type": "boolean"}})
SCRAPE_TLS = _obj([], {"ca": _obj([], {"secret": SECRET_KEY, "configMap": SECRET_KEY}), "serverName": STR,
                       "insecureSkipVerify": {"type": "boolean"}, "cert": {"type": "object"},
                       "keySecret": SECRET_KEY})
SCRAPE_ENDPOINT = {  # what ServiceMonitor endpoints and PodMonitor podMetricsEndpoints share
    "port": STR, "path": STR, "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]}, "interval": STR,
    "scrapeTimeout": STR, "tlsConfig": SCRAPE_TLS, "honorLabels": {"type": "boolean"},
    "authorization": _obj([], {"type": STR, "credentials": SECRET_KEY}),
    "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}
NAMESPACE_SELECTOR = _obj([], {"any": {"type": "boolean"}, "matchNames": STR_LIST})
CRD_SUBSETS: dict[tuple[str, str], dict] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _obj(["apiVersion", "kind", "metadata", "spec"], {
        "apiVersion": STR, "kind": STR, "metadata": META,
        "spec": _obj(["selector", "endpoints"], {
            "selector": LABEL_SELECTOR, "namespaceSelector": NAMESPACE_SELECTOR, "jobLabel": STR,
            "endpoints": {"type": "array", "items": _obj([], {**SCRAPE_ENDPOINT, "targetPort": {}})}})}),
    ("monitoring.coreos.com/v1", "PodMonitor"): _obj(["apiVersion", "kind", "metadata", "spec"], {
        "apiVersion": STR, "kind": STR, "metadata": META,
        "spec": _obj(["selector", "podMetricsEndpoints"], {
            "selector": LABEL_SELECTOR, "namespaceSelector": NAMESPACE_SELECTOR, "jobLabel": STR,
            "podMetricsEndpoints": {"type": "array", "items": _obj([], SCRAPE_ENDPOINT)}})}),
    ("keda.sh/v1alpha1", "ScaledObject"): _obj(["apiVersion", "kind", "metadata", "spec"], {
        "apiVersion": STR, "kind": STR, "metadata": META,
        "spec": _obj(["scaleTargetRef", "triggers"], {
            "scaleTargetRef": _obj(["name"], {"name": STR, "apiVersion": STR, "kind": STR,
                                              "envSourceContainerName": STR}),
            "minReplicaCount": INT, "maxReplicaCount": INT, "pollingInterval": INT, "cooldownPeriod": INT,
            "idleReplicaCount": INT, "initialCooldownPeriod": INT,
            "advanced": _obj([], {"restoreToOriginalReplicaCount": {"type": "boolean"},
                                  "horizontalPodAutoscalerConfig": _obj([], {"name": STR,
                                                                             "behavior": {"type": "object"}}),
                                  "scalingModifiers": {"type": "object"}}),
            "fallback": _obj(["failureThreshold", "replicas"], {"failureThreshold": INT, "replicas": INT}),
            "triggers": {"type": "array", "minItems": 1, "items": _obj(["type", "metadata"], {
                "type": STR, "name": STR, "useCachedMetrics": {"type": "boolean"},
                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                "metadata": {"type": "object", "additionalProperties": STR},
                "authenticationRef": _obj(["name"], {"name": STR, "kind": {
                    "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}})})}})}),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _obj(["apiVersion", "kind", "metadata", "spec"], {
        "apiVersion": STR, "kind": STR, "metadata": META,
        "spec": _obj([], {"secretTargetRef": {"type": "array", "items": _obj(
            ["parameter", "name", "key"], {"parameter": STR, "name": STR, "key": STR})},
            "env": {"type": "array"}, "podIdentity": {"type": "object"}}, closed=False)}),
    ("cert-manager.io/v1", "Issuer"): _obj(["apiVersion", "kind", "metadata", "spec"], {
        "apiVersion": STR, "kind": STR, "metadata": META, "spec": ISSUER_SPEC}),
    ("cert-manager.io/v1", "Certificate"): _obj(["apiVersion", "kind", "metadata", "spec"], {
        "apiVersion": STR, "kind": STR, "metadata": META,
        "spec": _obj(["secretName", "issuerRef"], {
            "secretName": STR, "issuerRef": ISSUER_REF, "commonName": STR, "dnsNames": STR_LIST,
            "isCA": {"type": "boolean"}, "duration": STR, "renewBefore": STR,
            "usages": {"type": "array", "items": {"enum": [
                "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
                "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
                "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
                "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]}},
            "privateKey": _obj([], {"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": INT,
                                    "encoding": {"enum": ["PKCS1", "PKCS8"]},
                                    "rotationPolicy": {"enum": ["Never", "Always"]}})})}),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _obj(["apiVersion", "kind", "metadata", "spec"], {
        "apiVersion": STR, "kind": STR, "metadata": META,
        "spec": _obj([], {"groups": {"type": "array", "items": _obj(["name", "rules"], {
            "name": STR, "interval": STR, "limit": INT, "partial_response_strategy": STR,
            "rules": {"type": "array", "items": RULE}})}})}),
}


def validate(doc: dict) -> None:
    schema = CRD_SUBSETS.get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.validate(doc, schema)
    else:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def all_rendered() -> list:
    out = []
    for path in kustomize_dirs():
        for doc in render(path):
            out.append(pytest.param(doc, id=f"{path.relative_to(MANIFESTS)}:{doc['kind']}/{doc['metadata']['name']}"))
    for mode in MODES:
        for doc in render_with_script(mode):
            out.append(pytest.param(doc, id=f"script:{mode}:{doc['kind']}/{doc['metadata']['name']}"))
    return out


@pytest.mark.parametrize("doc", all_rendered())
def test_resource_validates(doc):
    validate(doc)


def test_validation_uses_the_newest_schemas_shipped():
    shipped = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    newest = max(tuple(map(int, p.name[1:].split("-")[0].split("."))) for p in shipped.glob("v*-local-strict"))
    assert K8S_VERSIONS[-1] == ".".join(map(str, newest)) and newest >= (1, 37, 0)


def test_schema_validation_can_fail():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


@pytest.mark.parametrize(("kind", "change"), [
    ("ScaledObject", lambda d: d["spec"]["triggers"][0].update(metadta={})),  # a misspelt field
    ("ScaledObject", lambda d: d["spec"].pop("scaleTargetRef")),
    ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].update(targetValue=1)),  # not a string
    ("TriggerAuthentication", lambda d: d["spec"]["secretTargetRef"][0].pop("key")),
    ("Certificate", lambda d: d["spec"].pop("issuerRef")),
    ("Issuer", lambda d: d["spec"].update(ca={"secretName": "x"}, selfSigned={})),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(bearerTokenSecrett={})),  # misspelt
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"].pop("key")),
    ("PodMonitor", lambda d: d["spec"].update(podMetricsEndpoint=d["spec"].pop("podMetricsEndpoints"))),
])
def test_crd_checks_can_fail(kind, change):
    docs = {"ScaledObject": overlay("keda"), "TriggerAuthentication": overlay("keda"),
            "ServiceMonitor": overlay("observability"), "PodMonitor": overlay("observability")}.get(
        kind) or overlay("direct")
    doc = yaml.safe_load(yaml.safe_dump([d for d in docs if d["kind"] == kind][0]))
    change(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_the_prometheusrule_check_catches_a_rule_with_both_record_and_alert():
    doc = yaml.safe_load(yaml.safe_dump(the(overlay("observability"), "PrometheusRule", "qscale-alerts")))
    doc["spec"]["groups"][0]["rules"][0]["alert"] = "X"
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"}


@pytest.mark.parametrize("path", kustomize_dirs(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_a_kustomize_namespace_moves_nothing(path):
    """kustomize's `namespace:` rewrites every namespaced resource; one written for another
    namespace (the target's Role, a kube-system RoleBinding) would silently land in the wrong place."""
    spec = yaml.safe_load((path / "kustomization.yaml").read_text())
    if "namespace" not in spec:
        return
    for res in spec.get("resources", []):
        if not (path / res).is_file():
            continue
        for doc in yaml.safe_load_all((path / res).read_text()):
            if doc and doc["kind"] not in CLUSTER_SCOPED:
                assert doc["metadata"].get("namespace", spec["namespace"]) == spec["namespace"], (res, doc)


# --- each mode is what it says -----------------------------------------------------------------


def qscale_args(docs) -> list[str]:
    (c,) = the(docs, "Deployment", "qscale")["spec"]["template"]["spec"]["containers"]
    return c["args"]


def embedded_config(docs) -> AutoscalerConfig:
    cm = the(docs, "ConfigMap", "qscale-config")
    return AutoscalerConfig(**yaml.safe_load(cm["data"]["qscale.yaml"]))


@pytest.mark.parametrize("mode", MODES)
def test_the_embedded_config_is_valid_and_authenticates(mode):
    cfg = embedded_config(overlay(mode))
    assert cfg.leader_election and cfg.targets[0].backend == "kubernetes"
    assert cfg.authentication == "delegated" and cfg.tls_cert_file == "/tls/tls.crt"


@pytest.mark.parametrize("mode", MODES)
def test_only_direct_mode_writes_the_replica_count(mode):
    assert ("--shadow" in qscale_args(overlay(mode))) is SHADOW[mode]
    writes = [d for d in overlay(mode) if d["kind"] == "Role" and any(
        "update" in r["verbs"] and "deployments/scale" in r["resources"] for r in d["rules"])]
    assert bool(writes) is not SHADOW[mode]


@pytest.mark.parametrize("mode", MODES)
def test_who_scales_the_deployment(mode):
    docs = overlay(mode)
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    apiservices = [d for d in docs if d["kind"] == "APIService"]
    assert (len(hpas), len(scaled), len(apiservices)) == {
        "direct": (0, 0, 0), "shadow": (0, 0, 0), "hpa": (1, 0, 1), "hpa-follow": (1, 0, 1), "keda": (0, 1, 0)}[mode]


def external_metric(hpa: dict) -> tuple[str, dict, str, str]:
    (m,) = hpa["spec"]["metrics"]
    assert m["type"] == "External"
    ext = m["external"]
    return ext["metric"]["name"], ext["metric"].get("selector", {}), ext["target"]["type"], ext["target"]["averageValue"]


@pytest.mark.parametrize(("mode", "metric", "average"), [("hpa", "inference_queue_depth", "5"),
                                                          ("hpa-follow", "qscale_desired_replicas", "1")])
def test_the_hpa_reads_a_metric_qscale_serves_for_the_target(mode, metric, average):
    from autoscaler.external_metrics import METRICS

    docs = overlay(mode)
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    k = embedded_config(docs).targets[0].kubernetes
    assert hpa["metadata"]["namespace"] == k.namespace  # qscale answers only in the target's namespace
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": k.deployment}
    name, selector, kind, value = external_metric(hpa)
    assert (name, kind, value) == (metric, "AverageValue", average) and name in METRICS
    assert selector == {"matchLabels": {"deployment": k.deployment}}


# The HPA controller's scale-up rules (autoscaling/v2 defaulting, GenerateHPAScaleUpRules): a
# field left out takes the default, so `scaleUp: {stabilizationWindowSeconds: 0}` still allows
# only max(+4 pods, +100%) per 15 s.
DEFAULT_SCALE_UP = {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15},
                                 {"type": "Percent", "value": 100, "periodSeconds": 15}]}


def scale_up_limit(behavior: dict | None, current: int) -> int:
    """The most replicas the HPA controller may ask for from `current`, with no scale event in
    the policies' periods (calculateScaleUpLimitWithScalingRules)."""
    rules = {**DEFAULT_SCALE_UP, **((behavior or {}).get("scaleUp") or {})}
    if rules["selectPolicy"] == "Disabled":
        return current
    proposals = [current + p["value"] if p["type"] == "Pods" else math.ceil(current * (1 + p["value"] / 100))
                 for p in rules["policies"]]
    return min(proposals) if rules["selectPolicy"] == "Min" else max(proposals)


def hpa_behavior(mode: str) -> tuple[dict | None, int, int]:
    """(behavior, minReplicas, maxReplicas) of the HPA a mode makes (KEDA's from its ScaledObject)."""
    docs = overlay(mode)
    if mode == "keda":
        spec = the(docs, "ScaledObject", "vllm")["spec"]
        return (spec["advanced"]["horizontalPodAutoscalerConfig"].get("behavior"), spec["minReplicaCount"],
                spec["maxReplicaCount"])
    spec = the(docs, "HorizontalPodAutoscaler", "vllm")["spec"]
    return spec.get("behavior"), spec.get("minReplicas", 1), spec["maxReplicas"]


@pytest.mark.parametrize("mode", ["hpa-follow", "keda"])
def test_an_hpa_following_qscale_takes_any_jump_at_once(mode):
    """qscale paces its own decisions: the HPA that follows them must not add a window or a rate
    limit of its own - from any replica count, one step reaches the maximum."""
    behavior, lowest, highest = hpa_behavior(mode)
    # KEDA copies it into the HPA it makes: it must be a valid HPA behavior
    validate({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
              "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                       "maxReplicas": highest, "behavior": behavior}})
    assert behavior["scaleUp"].get("stabilizationWindowSeconds") == 0
    assert behavior["scaleDown"].get("stabilizationWindowSeconds") == 0
    assert all(scale_up_limit(behavior, n) >= highest for n in range(lowest, highest + 1))


def test_the_scale_up_check_can_fail():
    """The default rules (and the blog's HPA, which keeps them) take 1 -> 20 in steps: 5, 10, 20."""
    assert scale_up_limit(None, 1) == 5 and scale_up_limit({"scaleUp": {"stabilizationWindowSeconds": 0}}, 5) == 10
    assert scale_up_limit(hpa_behavior("hpa")[0], 1) < hpa_behavior("hpa")[2]


def test_the_keda_trigger_reads_qscales_decision_over_https_with_a_token():
    docs = overlay("keda")
    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    target = embedded_config(docs).targets[0]
    assert so["metadata"]["namespace"] == target.kubernetes.namespace
    assert so["spec"]["scaleTargetRef"]["name"] == target.kubernetes.deployment
    assert (trigger["type"], trigger["metricType"], meta["targetValue"]) == ("metrics-api", "AverageValue", "1")
    assert meta["url"] == f"https://qscale.qscale-system.svc/api/v1/targets/{target.name}"
    assert meta["valueLocation"] == "desired"
    assert "unsafeSsl" not in meta and meta["authMode"] == "bearer"
    auth = the(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    secret = the(docs, "Secret", ref["name"])
    assert ref["parameter"] == "token" and ref["key"] == "token" and secret["type"] == "kubernetes.io/service-account-token"
    reader = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    binding = the(docs, "ClusterRoleBinding", reader)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": reader, "namespace": so["metadata"]["namespace"]}]
    role = the(docs, "ClusterRole", binding["roleRef"]["name"])
    # the targets API is authorized as the cluster-scoped resource `targets` of the core group
    # (autoscaler/apiauth/attributes.py): get, on the one target the trigger reads
    assert role["rules"] == [{"apiGroups": [""], "resources": ["targets"], "resourceNames": [target.name],
                              "verbs": ["get"]}]


# --- observability: Prometheus scrapes qscale and vLLM ------------------------------------------


def selects(selector: dict, labels: dict) -> bool:
    return not selector.get("matchExpressions") and selector["matchLabels"].items() <= labels.items()


def bound_rules(docs, namespace: str, service_account: str) -> list[dict]:
    """The rules of the ClusterRoles bound to a ServiceAccount by ClusterRoleBindings in `docs`."""
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    return [r for b in docs if b["kind"] == "ClusterRoleBinding" and subject in b["subjects"]
            for r in the(docs, "ClusterRole", b["roleRef"]["name"])["rules"]]


def test_the_servicemonitor_scrapes_qscale_over_verified_https_with_a_token_allowed_only_metrics():
    mode, docs = overlay("direct"), overlay("observability")
    sm = the(docs, "ServiceMonitor", "qscale")
    service = the(mode, "Service", "qscale")
    assert sm["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert selects(sm["spec"]["selector"], service["metadata"]["labels"])
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    tls = endpoint["tlsConfig"]
    assert not tls.get("insecureSkipVerify")
    assert tls["ca"]["secret"] == {"name": mounted_secret(mode), "key": "ca.crt"}
    serving = the(mode, "Certificate", "qscale-serving")
    assert tls["serverName"] in serving["spec"]["dnsNames"]
    creds = endpoint["authorization"]["credentials"]
    secret = the(docs, "Secret", creds["name"])
    assert creds["key"] == "token" and secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["namespace"] == sm["metadata"]["namespace"]  # the operator reads it there
    reader = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert bound_rules(docs, secret["metadata"]["namespace"], reader) == [{"nonResourceURLs": ["/metrics"],
                                                                            "verbs": ["get"]}]


def test_the_podmonitor_scrapes_the_vllm_pods_on_their_metrics_port():
    pm = the(overlay("observability"), "PodMonitor", "vllm")
    vllm = the(render(MANIFESTS / "examples" / "vllm"), "Deployment", "vllm")
    target = embedded_config(overlay("direct")).targets[0].kubernetes
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [vllm["metadata"]["namespace"]]}
    assert vllm["metadata"]["namespace"] == target.namespace
    pod = vllm["spec"]["template"]
    assert selects(pm["spec"]["selector"], pod["metadata"]["labels"])
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    (container,) = pod["spec"]["containers"]
    port = next(p for p in container["ports"] if p["name"] == endpoint["port"])
    assert port["containerPort"] == target.metrics_port and endpoint["path"] == "/metrics"


def test_the_monitor_checks_can_fail():
    assert not selects({"matchLabels": {"app": "vllm"}}, {"app": "other"})
    docs = [d for d in overlay("observability") if d["kind"] != "ClusterRoleBinding"]
    assert bound_rules(docs, "qscale-system", "qscale-metrics-reader") == []


# --- the target's names: where a user changes them ----------------------------------------------

# Every file outside examples/ that names the example target (namespace llm, Deployment and
# target vllm): the README's "change the names for your own" list is this one.
TARGET_NAMED_IN = {"base/configmap.yaml", "base/rbac.yaml", "components/scaler/rbac.yaml", "overlays/hpa/hpa.yaml",
                   "overlays/hpa-follow/follow-qscale.yaml", "overlays/keda/scaledobject.yaml",
                   "overlays/keda/reader.yaml", "overlays/observability/monitors.yaml"}
TARGET_NAME = re.compile(r"(?<![\w.:-])v?llm(?![\w\[:.-])")  # llm, vllm; not vllm:metric, vllm[:_], meta-llama


def _strings(node) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def files_naming_the_target() -> set[str]:
    out = set()
    for path in MANIFESTS.rglob("*.yaml"):
        rel = path.relative_to(MANIFESTS).as_posix()
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if not rel.startswith("examples/") and any(TARGET_NAME.search(s) for d in docs for s in _strings(d)):
            out.add(rel)
    return out


def test_the_list_of_files_naming_the_target_is_complete():
    assert files_naming_the_target() == TARGET_NAMED_IN
    assert TARGET_NAME.search("url: https://qscale.qscale-system.svc/api/v1/targets/vllm")
    assert not TARGET_NAME.search('{__name__=~"vllm[:_]num_requests_waiting"}') and not TARGET_NAME.search("meta-llama")


# --- TLS: the APIService's caBundle -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_nothing_skips_tls_verification(mode):
    for docs in (overlay(mode), render_with_script(mode)):
        for d in docs:
            assert not (d.get("spec") or {}).get("insecureSkipTLSVerify"), d["metadata"]["name"]
            assert "unsafeSsl" not in str(d.get("spec")), d["metadata"]["name"]


def mounted_secret(docs) -> str:
    vols = the(docs, "Deployment", "qscale")["spec"]["template"]["spec"]["volumes"]
    (tls,) = [v for v in vols if v["name"] == "tls"]
    return tls["secret"]["secretName"]


SERVICE_DNS = "qscale.qscale-system.svc"


@pytest.mark.parametrize("mode", MODES)
def test_cert_manager_issues_the_mounted_certificate_and_injects_its_ca(mode):
    docs = overlay(mode)
    certs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    (serving,) = [c for c in certs.values() if c["spec"]["secretName"] == mounted_secret(docs)]
    assert SERVICE_DNS in serving["spec"]["dnsNames"] and "server auth" in serving["spec"]["usages"]
    issuer = the(docs, "Issuer", serving["spec"]["issuerRef"]["name"])
    ca = [c for c in certs.values() if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]]
    assert ca and ca[0]["spec"]["isCA"] is True
    for api in (d for d in docs if d["kind"] == "APIService"):
        svc = api["spec"]["service"]
        assert svc == {"name": "qscale", "namespace": "qscale-system", "port": 443}
        ns, name = api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
        assert (ns, name) == (serving["metadata"]["namespace"], serving["metadata"]["name"])


def load_cert(pem: bytes):
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem)


@pytest.mark.parametrize("mode", MODES)
def test_the_script_installs_a_certificate_signed_by_the_ca_in_the_cabundle(mode):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    docs = render_with_script(mode)
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    secret = the(docs, "Secret", mounted_secret(docs))
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["namespace"] == "qscale-system"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca, cert = load_cert(data["ca.crt"]), load_cert(data["tls.crt"])
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SERVICE_DNS in sans.get_values_for_type(x509.DNSName)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for api in (d for d in docs if d["kind"] == "APIService"):
        assert base64.b64decode(api["spec"]["caBundle"]) == data["ca.crt"]
        assert "cert-manager.io/inject-ca-from" not in (api["metadata"].get("annotations") or {})
    assert [d["kind"] for d in docs if d["kind"] == "APIService"] == (["APIService"] if "hpa" in mode else [])


def test_the_script_refuses_a_missing_overlay():
    out = subprocess.run([str(SCRIPT), "--print", "/nonexistent"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr


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


def qscale_pod_spec(mode: str = "direct") -> dict:
    return yaml.safe_load(yaml.safe_dump(the(overlay(mode), "Deployment", "qscale")["spec"]["template"]["spec"]))


@pytest.mark.parametrize("mode", MODES)
def test_the_qscale_pod_meets_pod_security_restricted(mode):
    assert restricted_violations(qscale_pod_spec(mode)) == []


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


@pytest.mark.parametrize("mode", MODES)
def test_the_qscale_image_is_the_one_the_base_kustomization_names(mode):
    """One place to point every overlay at the image a user built and pushed (README)."""
    (image,) = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())["images"]
    (c,) = the(overlay(mode), "Deployment", "qscale")["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"{image['newName']}:{image['newTag']}"


def test_certificate_renewal_needs_no_restart_as_the_comments_say():
    """qscale reloads a changed certificate (CertificateReloader, every 30 s): neither the script
    nor the cert-manager component restarts it or says it must be."""
    import inspect

    from autoscaler.apiauth.tls import CertificateReloader

    assert inspect.signature(CertificateReloader).parameters["interval_s"].default == 30.0
    for path in (SCRIPT, MANIFESTS / "components" / "cert-manager" / "certificates.yaml"):
        text = path.read_text()
        assert "rollout restart" not in text and "within 30 s" in text, path


def test_probes_liveness_on_healthz_readiness_on_readyz():
    (c,) = qscale_pod_spec()["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


# --- the vLLM example drains ----------------------------------------------------------------


def test_the_vllm_example_drains_in_flight_requests_on_scale_down():
    dep = the(render(MANIFESTS / "examples" / "vllm"), "Deployment", "vllm")
    assert "replicas" not in dep["spec"]  # the autoscaler owns it: re-applying must not reset it
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sleep_cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_cmd[0] == "sleep"
    pre_stop_s = int(sleep_cmd[1])
    shutdown_s = int(c["args"][c["args"].index("--shutdown-timeout") + 1])
    assert pre_stop_s >= 5 and shutdown_s >= 300  # endpoints update; a long generation finishes
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + shutdown_s


# --- RBAC: exactly what the code uses ---------------------------------------------------------

# The two bootstrap roles Kubernetes ships for aggregated API servers (what they grant).
BOOTSTRAP_ROLES = {
    ("ClusterRole", "", "system:auth-delegator"): [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}],
    ("Role", "kube-system", "extension-apiserver-authentication-reader"): [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["extension-apiserver-authentication"],
         "verbs": ["get", "list", "watch"]}],
}
# What the bootstrap reader grants that the code does not use (it reads the ConfigMap once).
BOOTSTRAP_SURPLUS = {("kube-system", "", "configmaps", verb, "extension-apiserver-authentication")
                     for verb in ("list", "watch")}


def granted_rules(docs) -> list[tuple[str, dict, bool]]:
    """(namespace, rule, from a bootstrap role) for every rule bound to the qscale ServiceAccount;
    namespace "*" for a ClusterRoleBinding. A role neither in the manifests nor bootstrap is a rule
    granting `?` (unknown)."""
    sa = the(docs, "ServiceAccount", "qscale")["metadata"]
    roles = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d["rules"]
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    out: list[tuple[str, dict, bool]] = []
    for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa["name"] and s["namespace"] == sa["namespace"]
                   for s in b["subjects"]):
            continue
        scope = b["metadata"]["namespace"] if b["kind"] == "RoleBinding" else "*"
        ref = b["roleRef"]
        key = (ref["kind"], scope if ref["kind"] == "Role" else "", ref["name"])
        unknown = [{"apiGroups": ["?"], "resources": [f"{ref['kind']} {ref['name']}"], "verbs": ["?"]}]
        rules, bootstrap = (roles[key], False) if key in roles else (BOOTSTRAP_ROLES.get(key, unknown), True)
        out.extend((scope, rule, bootstrap) for rule in rules)
    return out


def allows(scope: str, rule: dict, call) -> bool:
    """RBAC's rule match; create, list and watch name no object, so resourceNames never match them."""
    names = rule.get("resourceNames")
    return (scope in ("*", call.namespace) and call.group in rule["apiGroups"] and call.resource in rule["resources"]
            and call.verb in rule["verbs"] and (not names or (call.name != "" and call.name in names)))


async def _until_ready(backend, n: int):
    from policies import ReplicaState

    for _ in range(200):
        if sum(p.state is ReplicaState.READY for p in await backend.pods()) == n:
            return await backend.pods()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} pods not ready")


async def _backend_run(url: str, cfg: AutoscalerConfig, writes: bool) -> None:
    """A KubernetesBackend's start, reads, and (direct mode) a scale up and a scale down with
    remove_first; then leader election (create, then one renewal: get + update)."""
    from autoscaler.backends.kubernetes import KubernetesBackend, KubernetesTarget
    from autoscaler.kube.client import api_client
    from autoscaler.leader import LeaseElector
    from tests.k8s_double import fast_tuning

    target = KubernetesTarget(**{**cfg.targets[0].kubernetes.model_dump(), "api_url": url})
    b = KubernetesBackend.from_config(target, "rbac-test", fast_tuning())
    await b.start()
    await _until_ready(b, 2)
    await b.current_replicas()
    if writes:
        await b.set_replicas(3, "up")
        pods = await _until_ready(b, 3)
        await b.set_replicas(2, "down", remove_first=[pods[0].name])
    await b.close()
    elector = LeaseElector(api_client(url), cfg.lease_namespace, cfg.lease_name, "rbac-test", duration_s=3)
    task = asyncio.ensure_future(elector.run())
    await asyncio.sleep(1.3)
    elector.stop()
    await task


async def _delegated_auth(url: str, cfg: AutoscalerConfig) -> None:
    """The API's delegated authentication at start (the request-header CA from the ConfigMap) and
    one request with a bearer token (TokenReview, then SubjectAccessReview)."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from autoscaler.apiauth.setup import api_security

    auth_cfg = cfg.model_copy(update={"kube_api_url": url, "tls_cert_file": None, "tls_key_file": None})
    security = await asyncio.to_thread(api_security, auth_cfg)
    app = web.Application(middlewares=list(security.middlewares))
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/metrics", metrics)
    try:
        async with TestClient(TestServer(app)) as http:
            resp = await http.get("/metrics", headers={"Authorization": "Bearer scraper-token"})
            assert resp.status == 200, await resp.text()
    finally:
        security.close()


def record_calls(writes: bool) -> list:
    """Every API call qscale makes in a mode (writes: direct), recorded by the API double, for the
    target and Lease in the embedded config."""
    from autoscaler.apiauth.tls import issue
    from tests.k8s_double import (
        AccessRule,
        KubeDouble,
        TokenUser,
        extension_apiserver_authentication,
    )
    from tests.servers import free_port

    cfg = embedded_config(overlay("direct"))
    k = cfg.targets[0].kubernetes
    double = KubeDouble(cold_start_s=0.2, metrics_port=free_port())
    url = double.start()
    double.add_deployment(k.namespace, k.deployment, 2)
    double.configmaps[("kube-system", "extension-apiserver-authentication")] = extension_apiserver_authentication(
        issue("front-proxy-ca", is_ca=True).cert_pem.decode(), ["front-proxy-client"])
    double.auth.tokens = {"scraper-token": TokenUser("system:serviceaccount:monitoring:prometheus")}
    double.auth.rules = [AccessRule(groups=("system:authenticated",), verbs=("get",), non_resource_urls=("/metrics",))]

    async def scenario():
        await _backend_run(url, cfg, writes)
        await _delegated_auth(url, cfg)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        double.stop()
    return double.requests


READS = {("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
         ("apps", "deployments/scale", "get"),
         ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
         ("coordination.k8s.io", "leases", "update"),
         ("authentication.k8s.io", "tokenreviews", "create"), ("authorization.k8s.io", "subjectaccessreviews", "create"),
         ("", "configmaps", "get")}
WRITES = {("apps", "deployments/scale", "update"), ("", "events", "create"), ("", "pods", "patch"),
          ("autoscaling", "horizontalpodautoscalers", "list"), ("keda.sh", "scaledobjects", "list")}


@functools.cache
def calls(writes: bool) -> tuple:
    recorded = tuple(record_calls(writes))
    assert {(c.group, c.resource, c.verb) for c in recorded} == (READS | WRITES if writes else READS)
    return recorded


def ungranted(docs, recorded) -> list:
    rules = granted_rules(docs)
    return sorted({(c.namespace, c.group, c.resource, c.verb, c.name) for c in recorded
                   if not any(allows(scope, r, c) for scope, r, _ in rules)})


def unused(docs, recorded) -> set:
    extra = set()
    for scope, r, _ in granted_rules(docs):
        for group, resource, verb in itertools.product(r["apiGroups"], r["resources"], r["verbs"]):
            for name in r.get("resourceNames") or [None]:
                rule = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                if name is not None:
                    rule["resourceNames"] = [name]
                if not any(allows(scope, rule, c) for c in recorded):
                    extra.add((scope, group, resource, verb, name))
    return extra


@pytest.mark.parametrize("mode", MODES)
def test_rbac_grants_exactly_the_calls_the_code_makes(mode):
    docs = overlay(mode)
    recorded = calls(writes=not SHADOW[mode])
    assert ungranted(docs, recorded) == [], "the code makes calls RBAC does not grant"
    assert unused(docs, recorded) == BOOTSTRAP_SURPLUS, "RBAC grants what the code never uses"


def test_the_rbac_check_can_fail():
    """Direct mode's calls are more than a shadow overlay grants; a shadow run uses less than
    direct mode grants."""
    assert ("llm", "apps", "deployments/scale", "update", "vllm") in ungranted(overlay("shadow"), calls(True))
    assert ("llm", "", "pods", "patch", None) in unused(overlay("direct"), calls(False))


@pytest.mark.parametrize("mode", MODES)
def test_rules_on_named_objects_are_restricted_to_those_names(mode):
    """get/update on the target's scale and on the Lease name their object; pods are the
    exception (a ReplicaSet names them), and create/list/watch cannot be restricted by name."""
    for scope, r, _ in granted_rules(overlay(mode)):
        if set(r["verbs"]) & {"get", "update", "delete"}:
            assert r.get("resourceNames"), (scope, r)


@pytest.mark.parametrize("mode", MODES)
def test_the_only_cluster_wide_grant_is_delegated_authentication(mode):
    docs = overlay(mode)
    cluster = [r for scope, r, _ in granted_rules(docs) if scope == "*"]
    assert cluster == BOOTSTRAP_ROLES[("ClusterRole", "", "system:auth-delegator")]
    assert not [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].startswith("qscale")
                and any(re.search(r"\*", str(r)) for r in d["rules"]) and "nonResourceURLs" not in str(d["rules"])]


@pytest.mark.parametrize("mode", MODES)
def test_the_deployment_runs_as_the_bound_service_account(mode):
    docs = overlay(mode)
    sa = the(docs, "ServiceAccount", "qscale")["metadata"]
    assert the(docs, "Deployment", "qscale")["spec"]["template"]["spec"]["serviceAccountName"] == sa["name"]
    assert the(docs, "Deployment", "qscale")["metadata"]["namespace"] == sa["namespace"]
    target_ns = embedded_config(docs).targets[0].kubernetes.namespace
    assert {scope for scope, _, _ in granted_rules(docs)} == {target_ns, sa["namespace"], "kube-system", "*"}
