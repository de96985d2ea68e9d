"""Kubernetes object-name rules (apimachinery's validation), checked without regular expressions.

Names end up in API paths, so anything else (`../x`, `%2e%2e%2f`, upper case) is refused
before a request is built.
"""

from __future__ import annotations

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_LABEL_CHARS = _ALNUM | {"-"}


def is_dns1123_label(name: str) -> bool:
    """At most 63 of [a-z0-9-], starting and ending with an alphanumeric (namespaces)."""
    return (0 < len(name) <= 63 and name[0] in _ALNUM and name[-1] in _ALNUM
            and all(c in _LABEL_CHARS for c in name))


def is_dns1123_subdomain(name: str) -> bool:
    """At most 253 characters of dot-separated DNS-1123 labels (Deployments, most objects)."""
    return 0 < len(name) <= 253 and all(is_dns1123_label(part) for part in name.split("."))


def is_dns1035_label(name: str) -> bool:
    """A DNS-1123 label that starts with a letter (Services)."""
    return is_dns1123_label(name) and name[0].isalpha()


def check_name(kind: str, name: str, rule: str = "label") -> str:
    """`name` if it is valid for `rule` (label, subdomain, dns1035), else a one-line ValueError."""
    checks = {"label": (is_dns1123_label, "a DNS-1123 label (at most 63 of a-z, 0-9, '-', "
                                          "starting and ending with a letter or digit)"),
              "subdomain": (is_dns1123_subdomain, "a DNS-1123 subdomain (dot-separated DNS-1123 "
                                                  "labels, at most 253 characters)"),
              "dns1035": (is_dns1035_label, "a DNS-1035 label (at most 63 of a-z, 0-9, '-', "
                                            "starting with a letter, ending with a letter or digit)")}
    ok, what = checks[rule]
    if not ok(name):
        raise ValueError(f"{kind} {name[:80]!r} is not {what}")
    return name
