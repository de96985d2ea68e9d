"""vLLM's /metrics, exactly: family names, types, `model_name`/`engine` labels and bucket bounds
(vLLM 0.33 V1 engine, see shared/reference/wire-formats.md), plus the application-level
`llm_*` metrics. Gauges and counters are read from the replica model at scrape time;
histograms are observed as requests progress.

`legacy_names=True` exposes the pre-0.9 names (`vllm:gpu_cache_usage_perc`,
`vllm:gpu_prefix_cache_{queries,hits}`, `vllm:time_per_output_token_seconds`) instead, so
the scraper's fallbacks can be tested.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from simulations.replica import ReplicaModel

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
LABELS = ("engine", "model_name")


def length_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 token-count buckets up to max_model_len (`build_1_2_5_buckets`)."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return tuple(out)
            out.append(float(value))
        exponent += 1


class _ModelCollector:
    """Gauges and counters straight from the replica model's state."""

    def __init__(self, model: ReplicaModel, model_name: str, legacy: bool, finished_by_reason: dict[str, int]):
        self.model = model
        self.model_name = model_name
        self.legacy = legacy
        self.finished_by_reason = finished_by_reason
        self.created = time.time()

    def describe(self):
        return []

    def collect(self):
        m, labels = self.model, ["0", self.model_name]
        kv_name = "vllm:gpu_cache_usage_perc" if self.legacy else "vllm:kv_cache_usage_perc"
        prefix = "vllm:gpu_prefix_cache" if self.legacy else "vllm:prefix_cache"

        def gauge(name: str, doc: str, value: float, names=LABELS) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=list(names))
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=list(LABELS))
            c.add_metric(labels, value, created=self.created)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", m.num_running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", m.num_waiting)
        yield gauge(kv_name, "KV-cache usage. 1 means 100 percent usage.", m.kv_usage())
        yield counter(f"{prefix}_queries", "Prefix cache queries, in terms of number of queried tokens.", m.prefix_queries)
        yield counter(f"{prefix}_hits", "Prefix cache hits, in terms of number of cached tokens.", m.prefix_hits)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", m.preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", m.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", m.generation_tokens_now())
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=["engine", "finished_reason", "model_name"])
        for reason in ("abort", "length", "stop"):
            success.add_metric(["0", reason, self.model_name], self.finished_by_reason.get(reason, 0),
                               created=self.created)
        yield success
        yield _cache_config(m, labels)
        # The seed's application-level metrics.
        yield _single("llm_request_queue_depth", "Requests waiting for a batch slot.", m.num_waiting, self.model_name)
        yield _single("llm_kv_cache_utilization_ratio", "KV-cache in use, 0..1.", m.kv_usage(), self.model_name)


def _cache_config(m: ReplicaModel, labels: list[str]) -> GaugeMetricFamily:
    """vLLM's cache-config info gauge (value 1, the facts in labels), with the labels
    `qscale calibrate` reads; real vLLM has more of them."""
    names = ["block_size", "enable_prefix_caching", "engine", "num_gpu_blocks"]
    g = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=names)
    g.add_metric([str(m.p.block_size), str(m.prefix_caching), labels[0], str(m.p.num_gpu_blocks)], 1.0)
    return g


def _single(name: str, doc: str, value: float, model_name: str) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["model_name"])
    g.add_metric([model_name], value)
    return g


class VllmMetrics:
    def __init__(self, model: ReplicaModel, model_name: str, legacy_names: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.model_name = model_name
        self.finished_by_reason: dict[str, int] = {}
        self.registry.register(_ModelCollector(model, model_name, legacy_names, self.finished_by_reason))
        itl_name = "vllm:time_per_output_token_seconds" if legacy_names else "vllm:inter_token_latency_seconds"

        def hist(name: str, doc: str, buckets: tuple[float, ...], labels=LABELS) -> Histogram:
            return Histogram(name, doc, labelnames=labels, buckets=buckets, registry=self.registry)

        self.ttft = hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                         TTFT_BUCKETS).labels("0", model_name)
        self.itl = hist(itl_name, "Histogram of inter-token latency in seconds.", ITL_BUCKETS).labels("0", model_name)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                        LATENCY_BUCKETS).labels("0", model_name)
        self.queue = hist("vllm:request_queue_time_seconds",
                          "Histogram of time spent in WAITING phase for request.", LATENCY_BUCKETS).labels("0", model_name)
        lengths = length_buckets(model.p.max_model_len)
        self.prompt_len = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                               lengths).labels("0", model_name)
        self.output_len = hist("vllm:request_generation_tokens", "Number of generation tokens processed.",
                               lengths).labels("0", model_name)
        self.app_ttft = hist("llm_time_to_first_token_seconds", "Time to first token (application view).",
                             TTFT_BUCKETS, ("model_name",)).labels(model_name)

    def render(self, openmetrics: bool = False) -> bytes:
        return generate_openmetrics(self.registry) if openmetrics else generate_latest(self.registry)
