"""Manifests: every resource a kustomization lists exists and validates against the real
Kubernetes schemas (kubernetes-validate); the embedded qscale config is valid."""

from __future__ import annotations

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
