"""The aiohttp middleware: authenticate, authorize, then serve; Kubernetes Status bodies otherwise.

Authentication tries, in order (Kubernetes' union authenticator):
1. the front proxy: a verified client certificate with an allowed CN, naming the user in the
   request-header headers (headers from anyone else are ignored, never trusted);
2. a bearer token, by TokenReview.
Nobody -> 401. Authorization: the always-allowed groups (system:masters), else a
SubjectAccessReview -> 403 when it denies, 500 when it cannot be asked. A request whose review
finds too many reviews in flight -> 429 with Retry-After (autoscaler.apiauth.reviews.ReviewPool).
The always-allowed paths (/healthz, /livez, /readyz) skip both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import web

from autoscaler.apiauth.attributes import RequestAttributes, request_attributes
from autoscaler.apiauth.identity import UserInfo
from autoscaler.apiauth.requestheader import RequestHeaderAuthenticator
from autoscaler.apiauth.reviews import (
    AccessReviewer,
    Overloaded,
    ReviewError,
    TokenReviewer,
    Verdict,
)
from autoscaler.apiauth.status import status_response

log = structlog.get_logger("qscale.apiauth")

USER_KEY = web.RequestKey("qscale.user", UserInfo)  # request[USER_KEY]: who is asking


def peer_certificate(request: web.Request) -> dict | None:
    """The client certificate of the request's TLS connection, as verified in the handshake."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object.getpeercert() if ssl_object is not None else None


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class RequestAuthenticator:
    def __init__(self, front_proxy: RequestHeaderAuthenticator | None, tokens: TokenReviewer | None) -> None:
        self.front_proxy = front_proxy
        self.tokens = tokens

    async def authenticate(self, request: web.Request) -> UserInfo | None:
        if self.front_proxy is not None:
            user = self.front_proxy.authenticate(peer_certificate(request), request.headers)
            if user is not None:
                return user
        token = bearer_token(request)
        if token is None or self.tokens is None:
            return None
        try:
            return await self.tokens.review(token)
        except ReviewError as exc:
            log.warning("token review failed", error=str(exc))
            return None  # as Kubernetes: an authenticator error is a 401


class RequestAuthorizer:
    def __init__(self, reviewer: AccessReviewer, always_allow_groups: Iterable[str]) -> None:
        self.reviewer = reviewer
        self.always_allow_groups = frozenset(always_allow_groups)

    async def authorize(self, user: UserInfo, attrs: RequestAttributes) -> Verdict:
        if self.always_allow_groups.intersection(user.groups):
            return Verdict(True, "always-allowed group")  # system:masters, as the API server
        return await self.reviewer.review(user, attrs)


def is_open(path: str, patterns: Iterable[str]) -> bool:
    """`path` is one of `patterns`, or starts with one ending in `*` (and has no dot segment)."""
    for pattern in patterns:
        if pattern.endswith("*"):
            segments = path.split("/")
            if path.startswith(pattern[:-1]) and "." not in segments and ".." not in segments:
                return True
        elif path == pattern:
            return True
    return False


def unauthorized() -> web.Response:
    return status_response(401, "Unauthorized", "Unauthorized")


def forbidden(user: UserInfo, attrs: RequestAttributes, reason: str) -> web.Response:
    """The API server's wording: `<resource>.<group> is forbidden: User "u" cannot list ...`."""
    why = f": {reason}" if reason else ""
    r = attrs.resource
    if r is None:
        return status_response(403, "Forbidden", f'forbidden: User "{user.name}" cannot {attrs.verb} path '
                                                 f'"{attrs.path}"{why}', {})
    qualified = f"{r.resource}.{r.group}" if r.group else r.resource
    named = f' "{r.name}"' if r.name else ""
    resource = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
    where = f' in the namespace "{r.namespace}"' if r.namespace else " at the cluster scope"
    message = (f'{qualified}{named} is forbidden: User "{user.name}" cannot {attrs.verb} resource '
               f'"{resource}" in API group "{r.group}"{where}{why}')
    details = {"name": r.name, "group": r.group, "kind": r.resource} if r.name else {"group": r.group,
                                                                                   "kind": r.resource}
    return status_response(403, "Forbidden", message, details)


RETRY_AFTER_S = 1


def too_many_requests() -> web.Response:
    """As the API server's max-in-flight limit answers: 429, a Status, Retry-After."""
    response = status_response(429, "TooManyRequests", "Too many requests, please try again later.",
                               {"retryAfterSeconds": RETRY_AFTER_S})
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def internal_error(error: str) -> web.Response:
    return status_response(500, "InternalError", f"Internal error occurred: {error}",
                           {"causes": [{"message": error}]})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(authenticator: RequestAuthenticator, authorizer: RequestAuthorizer,
                    always_allow_paths: Iterable[str]):
    open_paths = tuple(always_allow_paths)

    @web.middleware
    async def authenticate_and_authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_open(request.path, open_paths):
            return await handler(request)
        try:
            user = await authenticator.authenticate(request)
        except Overloaded:
            return too_many_requests()
        if user is None:
            return unauthorized()
        attrs = request_attributes(request.method, request.path, request.query.get("watch") in ("true", "1"))
        try:
            verdict = await authorizer.authorize(user, attrs)
        except Overloaded:
            return too_many_requests()
        except ReviewError as exc:
            log.warning("access review failed", user=user.name, path=request.path, error=str(exc))
            return internal_error(f"authorization: {exc}")
        if not verdict.allowed:
            return forbidden(user, attrs, verdict.reason)
        request[USER_KEY] = user
        return await handler(request)

    return authenticate_and_authorize
