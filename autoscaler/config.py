"""The autoscaler's configuration file (`qscale run --config FILE`), validated by pydantic.

    listen: 127.0.0.1:9090        # /metrics, /api/v1/targets, /healthz, /readyz
    tick_s: 2
    shadow: false                 # decide and publish, never write
    targets:
      - name: chat
        backend: local            # or kubernetes
        policy: hybrid
        params: {min_replicas: 1, max_replicas: 6}
        limits: {min_replicas: 1, max_replicas: 6}
        outage: {fallback_after_s: 120, fallback_replicas: 2}
        local: {cold_start_s: 15, service_port: 8600, base_port: 8610}

A bad file is reported as one line per problem and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoscaler.backends.kubernetes import KubernetesTarget
from autoscaler.backends.local import LocalFleetConfig
from policies import ScaleLimits
from policies.control import OutageRules
from policies.engine import with_engine
from policies.errors import UserError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class PrometheusSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    pod_label: str = "pod"
    timeout_s: float = Field(2.0, gt=0, le=60, description="each query must answer within this")
    queries: dict[str, str] = {}  # override the PromQL per field

    @field_validator("queries")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        from autoscaler.metrics.prometheus import DEFAULT_QUERIES

        unknown = sorted(set(v) - set(DEFAULT_QUERIES))
        if unknown:
            raise ValueError(f"unknown query fields {', '.join(unknown)}; known: {', '.join(DEFAULT_QUERIES)}")
        return v


class TargetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    backend: Literal["local", "kubernetes"] = "local"
    policy: str = "hybrid"
    params: dict[str, Any] = {}
    limits: ScaleLimits = ScaleLimits(min_replicas=0, max_replicas=10)
    outage: OutageRules = OutageRules()
    model_name: str | None = None  # filter vLLM series by model_name
    metrics: Literal["scrape", "prometheus"] = "scrape"
    scrape_timeout_s: float = Field(1.5, gt=0)
    prometheus: PrometheusSource | None = None
    local: LocalFleetConfig | None = None
    kubernetes: KubernetesTarget | None = None
    stuck_pending_s: float = Field(600.0, gt=0)
    profile: str | None = Field(None, description="a performance profile (built-in name, or the YAML "
                                "`qscale calibrate` wrote for these replicas) whose step-time model and "
                                "limits policies that model the engine (hybrid) use")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from policies import registry

        registry.get(v)  # raises a one-line error naming the known ones
        return v

    @model_validator(mode="after")
    def _backend_section(self) -> TargetConfig:
        if self.backend == "kubernetes" and self.kubernetes is None:
            raise ValueError("backend kubernetes needs a 'kubernetes' section with at least 'deployment'")
        if self.backend == "local" and self.local is None:
            self.local = LocalFleetConfig()
        if self.metrics == "prometheus" and self.prometheus is None:
            raise ValueError("metrics: prometheus needs a 'prometheus' section with 'url'")
        from policies import registry

        self.params = with_engine(self.policy, self.params, self._local_engine())
        registry.params(self.policy, **self.params)
        return self

    def _local_engine(self) -> dict[str, Any] | None:
        """The engine model policies get: the target's `profile` (e.g. calibrated on these
        replicas), else the profile emulated local replicas run; none otherwise."""
        from simulations.profile import load_profile

        if self.profile is not None:
            return load_profile(self.profile).engine()
        if self.backend != "local" or self.local is None or self.local.engine != "emulated":
            return None
        engine = load_profile(self.local.profile).engine()
        if self.local.max_num_seqs:
            engine["max_num_seqs"] = self.local.max_num_seqs
        return engine


class AutoscalerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    listen: str = Field("127.0.0.1:9090", pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]*):\d{1,5}$",
                        description="host:port of /metrics and the APIs")
    tick_s: float = Field(2.0, ge=0.1, le=3600)
    unhealthy_after_ticks: int = Field(5, ge=2, description="/healthz fails after this many ticks without one completing")
    shadow: bool = False
    leader_election: bool = False
    lease_name: str = "qscale-leader"
    lease_namespace: str = "default"
    lease_duration_s: float = Field(15.0, gt=0)
    identity: str | None = None
    tls_cert_file: str | None = None  # serve HTTPS (the APIService for external metrics needs it)
    tls_key_file: str | None = None
    # --- who may call the APIs (autoscaler/apiauth), as an aggregated API server does it ---
    authentication: Literal["delegated", "none"] | None = Field(
        None, description="delegated: HTTPS, the aggregator's client certificate, TokenReview and "
        "SubjectAccessReview; none: no checks (local development only). Default: none on a "
        "loopback listen address, delegated otherwise")
    requestheader_client_ca_file: str | None = Field(
        None, description="CA of the aggregator's client certificate; default: "
        "kube-system/extension-apiserver-authentication, key requestheader-client-ca-file")
    requestheader_allowed_names: list[str] | None = Field(
        None, description="client-certificate CNs allowed to send identity headers; [] = any CN "
        "the CA signed; default: from the ConfigMap ([] with requestheader_client_ca_file)")
    requestheader_username_headers: list[str] | None = None  # default: ConfigMap, else X-Remote-User
    requestheader_group_headers: list[str] | None = None  # default: ConfigMap, else X-Remote-Group
    requestheader_extra_headers_prefix: list[str] | None = None  # default: ConfigMap, else X-Remote-Extra-
    kube_api_url: str | None = Field(None, description="API server for the reviews and the ConfigMap; "
                                     "default: $QSCALE_KUBE_API, in-cluster config, ~/.kube/config")
    auth_cache_ttl_s: float = Field(10.0, ge=0, le=300, description="review answers are reused this long")
    auth_cache_size: int = Field(4096, ge=1, le=1_000_000)
    authorization_always_allow_paths: list[str] = Field(
        ["/healthz", "/livez", "/readyz"], description="open to anyone (a trailing * is a prefix)")
    authorization_always_allow_groups: list[str] = ["system:masters"]
    targets: list[TargetConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> AutoscalerConfig:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique: {', '.join(dupes)}")
        return self

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, v: str) -> str:
        port = int(v.rpartition(":")[2])
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range 1-65535")
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @property
    def auth_mode(self) -> Literal["delegated", "none"]:
        """`authentication` as set, else none when only this host can connect, delegated otherwise."""
        if self.authentication is not None:
            return self.authentication
        return "none" if self.host_port[0] in LOOPBACK_HOSTS else "delegated"

    @model_validator(mode="after")
    def _tls_files_together(self) -> AutoscalerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        return self


def load_config(path: str | Path) -> AutoscalerConfig:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping at the top level")
    try:
        return AutoscalerConfig(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            lines.append(f"{p}: {loc}: {msg}")
        raise UserError("\n".join(lines)) from None
    except UserError as exc:
        raise UserError(f"{p}: {exc}") from None
