"""Kubernetes `Status` error bodies (shared/reference/wire-formats.md 2.2)."""

from __future__ import annotations

from aiohttp import web


def status_response(code: int, reason: str, message: str, details: dict | None = None) -> web.Response:
    """A `Status` with `code` as the HTTP status, as the API server answers a failed request."""
    body: dict = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return web.json_response(body, status=code)
