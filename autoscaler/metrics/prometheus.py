"""Metrics from Prometheus, for clusters that already scrape vLLM (prometheus-api-client).

One instant query per field, grouped by the pod label; counters are read cumulative, like
a direct scrape, so the same `SignalsBuilder` computes the rates. Every query can be
overridden; `{sel}` is replaced by the model_name matcher and `{pod}` by the pod label.
A pod the queries do not return is missing (the data is incomplete). The age of the data
is taken from the samples' timestamps (Prometheus is a scrape interval behind).

Both spellings of each name are queried: `vllm:x` and `vllm_x`. When Prometheus asks for
OpenMetrics (Prometheus 2.x does by default), prometheus_client 0.26 - vLLM's own
exposition library - escapes the colon and the series are stored as `vllm_x`; this was
seen with Debian's Prometheus 2.42 scraping both the emulator and the same library.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_api_client import PrometheusConnect

from autoscaler.backends.base import Pod
from autoscaler.metrics.base import SourceResult
from policies.figures import ReplicaFigures

DEFAULT_QUERIES = {
    "running": "sum by ({pod}) (vllm:num_requests_running{sel})",
    "waiting": "sum by ({pod}) (vllm:num_requests_waiting{sel})",
    "kv_cache_usage": "avg by ({pod}) (vllm:kv_cache_usage_perc{sel}) or avg by ({pod}) (vllm:gpu_cache_usage_perc{sel})",
    "requests_finished": "sum by ({pod}) (vllm:request_success_total{sel})",
    "generation_tokens": "sum by ({pod}) (vllm:generation_tokens_total{sel})",
    "prompt_tokens": "sum by ({pod}) (vllm:prompt_tokens_total{sel})",
    "preemptions": "sum by ({pod}) (vllm:num_preemptions_total{sel})",
    "ttft_sum": "sum by ({pod}) (vllm:time_to_first_token_seconds_sum{sel})",
    "ttft_count": "sum by ({pod}) (vllm:time_to_first_token_seconds_count{sel})",
    "queue_sum": "sum by ({pod}) (vllm:request_queue_time_seconds_sum{sel})",
    "queue_count": "sum by ({pod}) (vllm:request_queue_time_seconds_count{sel})",
    "prefix_queries": "sum by ({pod}) (vllm:prefix_cache_queries_total{sel}) or sum by ({pod}) (vllm:gpu_prefix_cache_queries_total{sel})",
    "prefix_hits": "sum by ({pod}) (vllm:prefix_cache_hits_total{sel}) or sum by ({pod}) (vllm:gpu_prefix_cache_hits_total{sel})",
}


class PrometheusSource:
    def __init__(self, settings, model_name: str | None = None) -> None:
        # A bounded answer time: a Prometheus that never answers must not hold the loop's threads.
        self.client = PrometheusConnect(url=settings.url, disable_ssl=True, timeout=settings.timeout_s)
        self.pod_label = settings.pod_label
        sel = '{model_name="%s"}' % model_name.replace('"', '\\"') if model_name else ""  # noqa: UP031
        self.queries = {}
        for field, q in DEFAULT_QUERIES.items():
            q = q.replace("{sel}", sel).replace("{pod}", self.pod_label)
            self.queries[field] = f"{q} or {q.replace('vllm:', 'vllm_')}"
        for field, q in settings.queries.items():  # user overrides are taken as written
            self.queries[field] = q.replace("{sel}", sel).replace("{pod}", self.pod_label)

    def _query(self, field: str) -> tuple[str, dict[str, tuple[float, float]] | Exception]:
        try:
            out = {}
            for row in self.client.custom_query(self.queries[field]):
                pod = row["metric"].get(self.pod_label)
                if pod is not None:
                    ts, value = row["value"]
                    out[pod] = (float(ts), float(value))
            return field, out
        except Exception as exc:  # Prometheus down or a bad query: no data this tick
            return field, exc

    async def read(self, pods: list[Pod]) -> SourceResult:
        results = await asyncio.gather(*(asyncio.to_thread(self._query, f) for f in self.queries))
        by_field = dict(results)
        result = SourceResult(figures={})
        gauges = [by_field.get("running"), by_field.get("waiting")]
        failed = next((v for v in gauges if isinstance(v, Exception)), None)
        newest = 0.0
        for pod in pods:
            if pod.metrics_url is None:  # nothing to read yet (starting)
                continue
            why = f"prometheus: {type(failed).__name__}" if failed is not None else None
            figures, stamp = (None, 0.0) if why else self._figures(pod.name, by_field)
            if why is None and figures is None:
                why = "prometheus: no series"
            result.figures[pod.name] = figures
            if why is not None:
                result.errors[pod.name] = why
            newest = max(newest, stamp)
        if newest:
            result.age_s = max(0.0, time.time() - newest)
        return result

    @staticmethod
    def _figures(pod: str, by_field: dict) -> tuple[ReplicaFigures | None, float]:
        """The pod's figures (None without its running or waiting series) and their newest timestamp."""
        running, waiting = by_field["running"].get(pod), by_field["waiting"].get(pod)
        if running is None or waiting is None:
            return None, 0.0  # vLLM always has both: one missing would read low
        values = {field: rows[pod][1] for field, rows in by_field.items()
                  if not isinstance(rows, Exception) and pod in rows}
        return ReplicaFigures(**values), max(running[0], waiting[0])

    async def close(self) -> None:
        return None
