"""The Deployment's scale subresource: read, and written with bounded retries.

* A read gives spec.replicas (absent at 0) and status.replicas (pods that exist, ready or not).
* A write is a PUT carrying the read resourceVersion, so a concurrent change is a 409, not a
  lost update; after a 409 it re-reads and writes only if the count still differs. 429, 5xx,
  timeouts and connection errors are retried after a wait (doubling; Retry-After honoured
  but capped at `max_wait_s`), within `attempts` tries and `budget_s` seconds per call, so
  one tick is never held for long: when the budget is spent the call fails with one line and
  the next tick tries again. A write whose answer was lost is detected by the re-read, so one
  decision never produces two successful writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from autoscaler.backends.base import ScaleRefused
from autoscaler.kube.errors import RETRYABLE, describe, retry_after_s


class ScaleFailed(RuntimeError):
    """A scale read or write did not succeed; the message is one line."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    first_wait_s: float = 0.5  # doubling after each failure
    max_wait_s: float = 2.0  # the most one wait lasts, Retry-After included
    budget_s: float = 4.0  # requests and waits of one call together
    request_timeout_s: float = 10.0  # one request, further cut to what is left of the budget


@dataclass(frozen=True)
class Scale:
    replicas: int  # spec.replicas
    status_replicas: int  # the Deployment's status.replicas: pods that exist, ready or not
    resource_version: str | None


def _scale(scale: client.V1Scale) -> Scale:
    spec = scale.spec.replicas if scale.spec is not None else None  # absent at 0
    status = scale.status.replicas if scale.status is not None else 0
    return Scale(spec or 0, status or 0, scale.metadata.resource_version if scale.metadata else None)


class _Tries:
    """One call's attempts and time budget; `failed` waits, or raises when it is spent."""

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self.policy = policy
        self.what = what
        self.started = time.monotonic()
        self.attempt = 0
        self.next_wait = policy.first_wait_s

    def timeout(self) -> float:
        left = self.policy.budget_s - (time.monotonic() - self.started)
        return max(0.5, min(self.policy.request_timeout_s, left))

    async def failed(self, exc: Exception) -> None:
        self.attempt += 1
        if isinstance(exc, ApiException) and exc.status == 403:
            raise ScaleRefused(f"{self.what}: forbidden ({describe(exc)})") from None
        retryable = not isinstance(exc, ApiException) or exc.status in RETRYABLE or exc.status == 409
        wait = 0.0 if isinstance(exc, ApiException) and exc.status == 409 else self._wait(exc)
        elapsed = time.monotonic() - self.started
        if not retryable or self.attempt >= self.policy.attempts or elapsed + wait > self.policy.budget_s:
            tries = f"after {self.attempt} attempt{'s' if self.attempt > 1 else ''} in {elapsed:.1f} s"
            raise ScaleFailed(f"{self.what} failed {tries}: {describe(exc)}") from None
        await asyncio.sleep(wait)

    def _wait(self, exc: Exception) -> float:
        asked = retry_after_s(exc)
        wait = min(self.policy.max_wait_s, asked if asked is not None else self.next_wait)
        self.next_wait = min(self.policy.max_wait_s, self.next_wait * 2)
        return wait


class ScaleClient:
    def __init__(self, api_client: client.ApiClient, namespace: str, deployment: str,
                 retry: RetryPolicy | None = None) -> None:
        self.apps = client.AppsV1Api(api_client)
        self.namespace = namespace
        self.deployment = deployment
        self.retry = retry or RetryPolicy()
        self.last: Scale | None = None  # the last scale read, whoever asked
        self.writes = 0

    async def read(self, timeout_s: float | None = None) -> Scale:
        """One GET of the scale subresource (no retry: the next tick reads again)."""
        scale = await asyncio.to_thread(self.apps.read_namespaced_deployment_scale, self.deployment,
                                        self.namespace, _request_timeout=timeout_s or self.retry.request_timeout_s)
        self.last = _scale(scale)
        return self.last

    async def set(self, replicas: int, prepare: Callable[[Scale], Awaitable[None]] | None = None) -> Scale | None:
        """Write `replicas`; the scale it changed from, or None if it was there already.
        `prepare(scale)` runs once, before the first write (e.g. pod deletion costs)."""
        tries = _Tries(self.retry, f"scale deployment {self.namespace}/{self.deployment} to {replicas}")
        before: Scale | None = None
        while True:
            try:
                scale = await self.read(tries.timeout())
                if scale.replicas == replicas:
                    return before  # there already: someone agreed, or an earlier attempt landed
                if before is None:
                    before = scale
                    if prepare is not None:
                        await prepare(scale)
                await self._replace(replicas, scale.resource_version, tries.timeout())
                self.writes += 1
                return before
            except (ScaleRefused, ScaleFailed):
                raise
            except Exception as exc:
                await tries.failed(exc)

    async def _replace(self, replicas: int, resource_version: str | None, timeout_s: float) -> None:
        body = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": self.deployment, "namespace": self.namespace,
                             "resourceVersion": resource_version},
                "spec": {"replicas": replicas}}
        # Explicit: client 37 sends a PUT body with no Content-Type unless told. The answer
        # carries the new spec and resourceVersion, and still the old status.replicas.
        self.last = _scale(await asyncio.to_thread(self.apps.replace_namespaced_deployment_scale, self.deployment, self.namespace,
                                body, _headers={"Content-Type": "application/json"}, _request_timeout=timeout_s))
