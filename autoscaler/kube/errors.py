"""One-line descriptions of API failures, for logs, events and the errors the backend raises."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

RETRYABLE = frozenset({429, 500, 502, 503, 504})


def describe(exc: BaseException) -> str:
    """`409 Conflict: <the Status message>` for an API error (the reason and message of its
    Status body, else the HTTP reason), `<Type>: <text>` otherwise; one line."""
    if isinstance(exc, ApiException):
        try:  # a Status body: its reason (e.g. TooManyRequests) and message
            body = json.loads(exc.body or "{}")
            body = body if isinstance(body, dict) else {}
        except ValueError:
            body = {}
        message = str(body.get("message") or "")
        text = f"{exc.status} {body.get('reason') or exc.reason}" + (f": {message}" if message else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


def retry_after_s(exc: BaseException) -> float | None:
    """The Retry-After header of a 429/503, in seconds, if it gives a number."""
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff
