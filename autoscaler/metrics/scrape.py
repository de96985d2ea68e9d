"""Direct scrape of every pod's /metrics, concurrently, each with its own timeout.

One slow or broken pod never blocks the others: it is reported missing (with why) and the
signals say the data is incomplete.
"""

from __future__ import annotations

import asyncio

import aiohttp

from autoscaler.backends.base import Pod
from autoscaler.metrics.base import SourceResult
from autoscaler.metrics.parse import MetricsParseError, parse_vllm_metrics
from policies.figures import ReplicaFigures


class ScrapeSource:
    def __init__(self, model_name: str | None = None, timeout_s: float = 1.5, max_body_bytes: int = 8 << 20) -> None:
        self.model_name = model_name
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60)
            )
        return self._session

    async def _one(self, pod: Pod) -> tuple[str, ReplicaFigures | None, str | None]:
        assert pod.metrics_url is not None
        try:
            async with self._client().get(pod.metrics_url) as resp:
                if resp.status != 200:
                    return pod.name, None, f"HTTP {resp.status}"
                body = await self._body(resp)
                if body is None:
                    return pod.name, None, "metrics body too large"
            return pod.name, parse_vllm_metrics(body.decode("utf-8", "replace"), self.model_name), None
        except TimeoutError:
            return pod.name, None, "timeout"
        except aiohttp.ClientError as exc:
            return pod.name, None, type(exc).__name__
        except MetricsParseError as exc:
            return pod.name, None, f"unparseable: {exc}"

    async def _body(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The whole body (every chunk of a chunked one, to its end), or None past the cap.
        A body cut short raises aiohttp.ClientPayloadError: the pod is unreadable this tick."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def read(self, pods: list[Pod]) -> SourceResult:
        targets = [p for p in pods if p.metrics_url is not None]
        results = await asyncio.gather(*(self._one(p) for p in targets))
        out = SourceResult(figures={})
        for name, snap, err in results:
            out.figures[name] = snap
            if err is not None:
                out.errors[name] = err
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
