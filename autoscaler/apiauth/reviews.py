"""Delegated authentication and authorization: TokenReview and SubjectAccessReview through the
official `kubernetes` client, each answer reused for a short time (Kubernetes' delegating
authenticator and authorizer cache both for 10 s), at most `size` answers kept, and one review in
flight per question however many requests ask it at once. A token's answer is kept under the
token's SHA-256, an access review's under the question it asks (`AccessQuestion`: the whole
user and the attributes, never the raw path).

The client blocks, so its calls run on threads - their own (`ReviewPool`: 4), never the event
loop's default executor, which the control loop's Kubernetes and Prometheus calls use: a flood
of requests with junk tokens cannot stall scaling. At most 64 reviews run or wait at once; past
that a request is refused at once (`Overloaded`: 429 with Retry-After, as the API server's
max-in-flight limit answers), costing the API server nothing.

A review the API server could not answer raises `ReviewError` and is not cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from autoscaler.apiauth.attributes import RequestAttributes, ResourceAttributes
from autoscaler.apiauth.identity import UserInfo

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

REVIEW_TIMEOUT_S = 5.0  # the aggregator gives the availability probe 5 s
REVIEW_THREADS = 4  # client calls at once; each holds a thread up to REVIEW_TIMEOUT_S
MAX_REVIEWS_IN_FLIGHT = 64  # running or waiting for a thread; more: 429


class ReviewError(Exception):
    """The API server did not answer a review (unreachable, 5xx, forbidden to us)."""


class Overloaded(Exception):
    """Too many reviews in flight: the request is refused (429), not queued."""


class TtlCache(Generic[K, V]):
    """Answers kept `ttl_s` seconds, the oldest dropped beyond `size`; concurrent misses of one
    key share one call of `fetch`."""

    def __init__(self, ttl_s: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self.clock = clock
        self._answers: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._in_flight: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def _fresh(self, key: K) -> tuple[bool, V | None]:
        found = self._answers.get(key)
        if found is None:
            return False, None
        if found[0] <= self.clock():
            del self._answers[key]
            return False, None
        return True, found[1]

    def _store(self, key: K, value: V) -> None:
        if self.ttl_s <= 0:
            return
        self._answers[key] = (self.clock() + self.ttl_s, value)
        self._answers.move_to_end(key)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        hit, value = self._fresh(key)
        if hit:
            return value  # type: ignore[return-value]
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            value = await fetch()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._in_flight[key]
        self._store(key, value)
        future.set_result(value)
        return value


class ReviewPool:
    """The reviews' blocking client calls, on `threads` threads of their own, at most
    `max_in_flight` running or waiting at once (counted until the call ends on its thread, so a
    request that gives up does not free a place its call still holds)."""

    def __init__(self, threads: int = REVIEW_THREADS, max_in_flight: int = MAX_REVIEWS_IN_FLIGHT) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="qscale-review")
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def call(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on a review thread, its failures as ReviewError; Overloaded at the cap."""
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(f"{self.in_flight} reviews in flight")
        loop = asyncio.get_running_loop()
        try:
            job: Future = self._executor.submit(functools.partial(fn, *args, _request_timeout=REVIEW_TIMEOUT_S,
                                                                  **kwargs))
        except RuntimeError as exc:  # closed: the server is stopping
            raise ReviewError(str(exc)) from None
        self.in_flight += 1
        job.add_done_callback(lambda _: self._release(loop))
        try:
            return await asyncio.wrap_future(job)
        except ApiException as exc:
            raise ReviewError(f"{exc.status} {exc.reason}".strip()) from None
        except Exception as exc:  # urllib3 connection and timeout errors
            raise ReviewError(f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the review thread (or at once, for a cancelled call): one place free again."""
        def release() -> None:
            self.in_flight -= 1

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody counts any more
            loop.call_soon_threadsafe(release)

    def close(self) -> None:
        """Calls not started are dropped; running ones end within REVIEW_TIMEOUT_S."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class TokenReviewer:
    """A bearer token's user by TokenReview (authentication.k8s.io/v1); None when rejected."""

    def __init__(self, api: client.AuthenticationV1Api, cache: TtlCache[bytes, UserInfo | None],
                 pool: ReviewPool) -> None:
        self.api = api
        self.cache = cache
        self.pool = pool

    async def review(self, token: str) -> UserInfo | None:
        key = hashlib.sha256(token.encode()).digest()  # the token itself is not kept
        return await self.cache.get(key, lambda: self._ask(token))

    async def _ask(self, token: str) -> UserInfo | None:
        body = client.V1TokenReview(api_version="authentication.k8s.io/v1", kind="TokenReview",
                                    spec=client.V1TokenReviewSpec(token=token))
        answer = await self.pool.call(self.api.create_token_review, body)
        status = answer.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            return None
        user = status.user
        return UserInfo.make(user.username, user.groups or (), user.uid or "", user.extra)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""


def normalized_path(path: str) -> str:
    """A non-resource path with each run of slashes as one (`//metrics` is `/metrics`)."""
    return re.sub(r"/{2,}", "/", path)


@dataclass(frozen=True)
class AccessQuestion:
    """Exactly what one SubjectAccessReview asks - the user (name, groups, uid, extra), the verb,
    and the resource attributes or the non-resource path - and so the key its answer is cached
    under: two requests share an answer only if they ask the same question. A resource
    request's path is not part of it (`//apis/...` asks what `/apis/...` asks)."""

    user: UserInfo  # name, groups, uid, extra: all of it
    verb: str
    resource: ResourceAttributes | None
    path: str  # a non-resource request's, normalized; "" for a resource request

    @staticmethod
    def of(user: UserInfo, attrs: RequestAttributes) -> AccessQuestion:
        path = "" if attrs.resource is not None else normalized_path(attrs.path)
        return AccessQuestion(user, attrs.verb, attrs.resource, path)

    def spec(self) -> client.V1SubjectAccessReviewSpec:
        u = self.user
        spec = client.V1SubjectAccessReviewSpec(user=u.name, groups=list(u.groups), uid=u.uid or None,
                                                extra=u.extra_dict() or None)
        r = self.resource
        if r is None:
            spec.non_resource_attributes = client.V1NonResourceAttributes(path=self.path, verb=self.verb)
        else:
            spec.resource_attributes = client.V1ResourceAttributes(
                group=r.group, version=r.version, resource=r.resource, namespace=r.namespace or None,
                name=r.name or None, subresource=r.subresource or None, verb=self.verb)
        return spec


class AccessReviewer:
    """Whether a user may do what a request asks, by SubjectAccessReview (authorization.k8s.io/v1)."""

    def __init__(self, api: client.AuthorizationV1Api, cache: TtlCache[AccessQuestion, Verdict],
                 pool: ReviewPool) -> None:
        self.api = api
        self.cache = cache
        self.pool = pool

    async def review(self, user: UserInfo, attrs: RequestAttributes) -> Verdict:
        question = AccessQuestion.of(user, attrs)
        return await self.cache.get(question, lambda: self._ask(question))

    async def _ask(self, question: AccessQuestion) -> Verdict:
        body = client.V1SubjectAccessReview(api_version="authorization.k8s.io/v1", kind="SubjectAccessReview",
                                            spec=question.spec())
        answer = await self.pool.call(self.api.create_subject_access_review, body)
        status = answer.status
        if status is None:
            raise ReviewError("SubjectAccessReview answered without a status")
        return Verdict(bool(status.allowed) and not bool(status.denied), status.reason or "")
