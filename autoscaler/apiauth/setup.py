"""The HTTP server's security, built from the autoscaler's config (`authentication`).

* `delegated`: HTTPS (the configured certificate, else a self-signed one, with a warning);
  the request-header CA from `requestheader_client_ca_file` or the ConfigMap
  kube-system/extension-apiserver-authentication; TokenReview and SubjectAccessReview through
  the official client; the middleware in autoscaler.apiauth.middleware.
* `none` (local development): no checks, with a warning; HTTPS only if a certificate is set.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException

from autoscaler.apiauth.middleware import RequestAuthenticator, RequestAuthorizer, auth_middleware
from autoscaler.apiauth.requestheader import (
    CONFIGMAP_NAME,
    CONFIGMAP_NAMESPACE,
    Overrides,
    RequestHeaderAuthenticator,
    RequestHeaderSettings,
    resolve,
)
from autoscaler.apiauth.reviews import AccessReviewer, ReviewPool, TokenReviewer, TtlCache
from autoscaler.apiauth.tls import CertificateReloader, development_certificate, server_context
from autoscaler.config import AutoscalerConfig
from autoscaler.kube.client import api_client
from policies.errors import UserError

log = structlog.get_logger("qscale.apiauth")


@dataclass
class ApiSecurity:
    ssl_context: ssl.SSLContext | None
    middlewares: tuple = ()
    request_header: RequestHeaderSettings | None = None
    background: tuple[Callable[[], Awaitable[None]], ...] = ()  # run while serving (certificate reload)
    closers: tuple[Callable[[], None], ...] = ()  # called once the server has stopped (review threads)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def close(self) -> None:
        for close in self.closers:
            close()


def api_security(config: AutoscalerConfig) -> ApiSecurity:
    """Blocking (it may read the ConfigMap): call it before serving, off the event loop."""
    if config.auth_mode == "none":
        return _no_checks(config)
    return _delegated(config)


def _no_checks(config: AutoscalerConfig) -> ApiSecurity:
    log.warning("authentication: none - every caller may read the external metrics API and "
                "/api/v1/targets; for local development only", listen=config.listen)
    if not (config.tls_cert_file and config.tls_key_file):
        return ApiSecurity(None)
    ctx = server_context(config.tls_cert_file, config.tls_key_file, None, None)
    return ApiSecurity(ctx, background=_reload(config, ctx))


def _reload(config: AutoscalerConfig, ctx: ssl.SSLContext) -> tuple[Callable[[], Awaitable[None]], ...]:
    if not (config.tls_cert_file and config.tls_key_file):
        return ()  # the development certificate lives as long as the process
    return (CertificateReloader(ctx, config.tls_cert_file, config.tls_key_file).run,)


def _kube(config: AutoscalerConfig) -> client.ApiClient:
    try:
        return api_client(config.kube_api_url)
    except ConfigException as exc:
        raise UserError(f"authentication: delegated needs the Kubernetes API (in-cluster, ~/.kube/config, "
                        f"$QSCALE_KUBE_API or kube_api_url): {str(exc).rstrip('.')}; for local development set "
                        "authentication: none") from None


def _read_configmap(kube: client.ApiClient) -> Mapping[str, str]:
    """The ConfigMap's data; {} when it does not exist (then no request-header CA is known)."""
    try:
        cm = client.CoreV1Api(kube).read_namespaced_config_map(CONFIGMAP_NAME, CONFIGMAP_NAMESPACE,
                                                               _request_timeout=10)
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise UserError(f"cannot read ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: {exc.status} {exc.reason} "
                        "(the service account needs the extension-apiserver-authentication-reader "
                        "RoleBinding), or set requestheader_client_ca_file") from None
    except Exception as exc:  # unreachable API server
        raise UserError(f"cannot read ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: "
                        f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return cm.data or {}


def _request_header(config: AutoscalerConfig, kube: client.ApiClient) -> RequestHeaderSettings | None:
    overrides = Overrides(config.requestheader_client_ca_file, config.requestheader_allowed_names,
                          config.requestheader_username_headers, config.requestheader_group_headers,
                          config.requestheader_extra_headers_prefix)
    try:
        settings = resolve(overrides, lambda: _read_configmap(kube))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if settings is None:
        log.warning("no request-header CA (requestheader_client_ca_file unset, none in "
                    f"{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}): identity headers are never trusted, "
                    "only bearer tokens authenticate")
    elif not settings.allowed_names:
        log.info("request-header CA set without allowed names: any client certificate it signed may "
                 "send identity headers")
    return settings


def _serving_hosts(config: AutoscalerConfig) -> tuple[str, ...]:
    host = config.host_port[0]
    named = () if host in ("0.0.0.0", "::", "") else (host,)
    return tuple(dict.fromkeys((*named, "localhost", "127.0.0.1", "::1", socket.gethostname())))


def _serving_context(config: AutoscalerConfig, settings: RequestHeaderSettings | None) -> ssl.SSLContext:
    development = None
    if not (config.tls_cert_file and config.tls_key_file):
        hosts = _serving_hosts(config)
        log.warning("no tls_cert_file/tls_key_file: serving a self-signed certificate generated at start, "
                    "for development only (no client can verify it; the APIService cannot carry a caBundle "
                    "for it)", hosts=list(hosts))
        development = development_certificate(hosts)
    return server_context(config.tls_cert_file, config.tls_key_file, development,
                          settings.client_ca_pem if settings else None)


def _delegated(config: AutoscalerConfig) -> ApiSecurity:
    kube = _kube(config)
    settings = _request_header(config, kube)
    ctx = _serving_context(config, settings)
    ttl, size = config.auth_cache_ttl_s, config.auth_cache_size
    pool = ReviewPool()  # the reviews' own threads: never the control loop's default executor
    authenticator = RequestAuthenticator(
        RequestHeaderAuthenticator(settings) if settings is not None else None,
        TokenReviewer(client.AuthenticationV1Api(kube), TtlCache(ttl, size), pool))
    authorizer = RequestAuthorizer(AccessReviewer(client.AuthorizationV1Api(kube), TtlCache(ttl, size), pool),
                                   config.authorization_always_allow_groups)
    middleware = auth_middleware(authenticator, authorizer, config.authorization_always_allow_paths)
    return ApiSecurity(ctx, (middleware,), settings, _reload(config, ctx), (pool.close,))
