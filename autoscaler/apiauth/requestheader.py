"""The front proxy's identity headers (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`),
trusted only from a client certificate that chains to the request-header CA and whose CN is
one of the allowed names (an empty list: any CN that CA signed).

The settings come from the config, else from the ConfigMap
`kube-system/extension-apiserver-authentication` the API server publishes, whose list values
are JSON arrays stored as strings (shared/reference/wire-formats.md 3.5).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from cryptography import x509
from multidict import CIMultiDictProxy

from autoscaler.apiauth.identity import UserInfo
from autoscaler.apiauth.tls import common_name

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"

DEFAULT_USERNAME_HEADERS = ("X-Remote-User",)
DEFAULT_GROUP_HEADERS = ("X-Remote-Group",)
DEFAULT_EXTRA_PREFIXES = ("X-Remote-Extra-",)


@dataclass(frozen=True)
class RequestHeaderSettings:
    client_ca_pem: bytes
    allowed_names: tuple[str, ...]  # () = any CN the CA signed
    username_headers: tuple[str, ...] = DEFAULT_USERNAME_HEADERS
    group_headers: tuple[str, ...] = DEFAULT_GROUP_HEADERS
    extra_prefixes: tuple[str, ...] = DEFAULT_EXTRA_PREFIXES


@dataclass(frozen=True)
class Overrides:
    """What the config sets; None: take the ConfigMap's (or the default)."""

    client_ca_file: str | None = None
    allowed_names: list[str] | None = None
    username_headers: list[str] | None = None
    group_headers: list[str] | None = None
    extra_prefixes: list[str] | None = None


def _json_list(data: Mapping[str, str], key: str) -> list[str] | None:
    raw = data.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"{CONFIGMAP_NAME}: {key} is not a JSON list: {raw[:80]!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{CONFIGMAP_NAME}: {key} is not a JSON list of strings: {raw[:80]!r}")
    return value


def checked_ca(pem: bytes, where: str) -> bytes:
    """`pem` if it holds at least one certificate, else a one-line ValueError."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"{where}: no PEM certificate found")
    return pem


def _pick(configured: list[str] | None, published: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if configured is not None:
        return tuple(configured)
    return tuple(published) if published is not None else default


def resolve(overrides: Overrides, read_configmap: Callable[[], Mapping[str, str]]) -> RequestHeaderSettings | None:
    """The settings from the config's file and lists, the ConfigMap filling what is unset.
    None when no request-header CA is known (identity headers are then never trusted)."""
    published: Mapping[str, str] = {}
    if overrides.client_ca_file is not None:
        # A mounted CA: the ConfigMap is not read; without names, any CN it signed (as the
        # Kubernetes flags default).
        path = Path(overrides.client_ca_file)
        try:
            ca = checked_ca(path.read_bytes(), str(path))
        except OSError as exc:
            raise ValueError(f"requestheader_client_ca_file {path}: {exc.strerror or exc}") from None
        names = tuple(overrides.allowed_names or ())
    elif (published := read_configmap()).get("requestheader-client-ca-file"):
        ca = checked_ca(published["requestheader-client-ca-file"].encode(), f"{CONFIGMAP_NAME}: "
                        "requestheader-client-ca-file")
        names = _pick(overrides.allowed_names, _json_list(published, "requestheader-allowed-names"), ())
    else:
        return None
    return RequestHeaderSettings(
        client_ca_pem=ca, allowed_names=names,
        username_headers=_pick(overrides.username_headers, _json_list(published, "requestheader-username-headers"),
                               DEFAULT_USERNAME_HEADERS),
        group_headers=_pick(overrides.group_headers, _json_list(published, "requestheader-group-headers"),
                            DEFAULT_GROUP_HEADERS),
        extra_prefixes=_pick(overrides.extra_prefixes, _json_list(published, "requestheader-extra-headers-prefix"),
                             DEFAULT_EXTRA_PREFIXES))


class RequestHeaderAuthenticator:
    """The user the front proxy names, if the connection's verified certificate is the proxy's."""

    def __init__(self, settings: RequestHeaderSettings) -> None:
        self.settings = settings
        self._allowed = frozenset(settings.allowed_names)

    def trusted(self, peercert: dict | None) -> bool:
        """A verified certificate (non-empty: it chained to the request-header CA) with an allowed CN."""
        if not peercert:
            return False
        return not self._allowed or common_name(peercert) in self._allowed

    def authenticate(self, peercert: dict | None, headers: CIMultiDictProxy[str]) -> UserInfo | None:
        """The named user, or None (not the proxy, or no user header: other authenticators may try)."""
        if not self.trusted(peercert):
            return None
        name = next((v for h in self.settings.username_headers for v in headers.getall(h, ()) if v), None)
        if name is None:
            return None
        groups = [v for h in self.settings.group_headers for v in headers.getall(h, ())]
        return UserInfo.make(name, groups, extra=self._extra(headers))

    def _extra(self, headers: CIMultiDictProxy[str]) -> dict[str, list[str]]:
        extra: dict[str, list[str]] = {}
        for header, value in headers.items():
            for prefix in self.settings.extra_prefixes:
                if header.lower().startswith(prefix.lower()) and len(header) > len(prefix):
                    extra.setdefault(unquote(header[len(prefix):].lower()), []).append(value)
        return extra
