"""A fast parser for vLLM's Prometheus text exposition, reading only what the autoscaler needs.

* sums over the `engine` label (one series per engine core under data parallelism; V0 and
  early V1 have no `engine` label at all);
* keeps only series whose `model_name` matches, when a model name is given;
* reads new names and falls back to old ones (`kv_cache_usage_perc` then
  `gpu_cache_usage_perc`; `prefix_cache_*` then `gpu_prefix_cache_*`;
  `inter_token_latency_seconds` then `time_per_output_token_seconds`).

Lines of families it does not read are skipped after a prefix check, so a 600-line real
exposition costs little more than its ~60 interesting lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class MetricsParseError(ValueError):
    """The body is not a Prometheus exposition with vLLM's gauges."""


# sample name -> (field, how): "sum" over engines, "mean" over engines.
_WANTED: dict[str, tuple[str, str]] = {
    "vllm:num_requests_running": ("running", "sum"),
    "vllm:num_requests_waiting": ("waiting", "sum"),
    "vllm:kv_cache_usage_perc": ("kv_usage", "mean"),
    "vllm:gpu_cache_usage_perc": ("kv_usage_legacy", "mean"),
    "vllm:prefix_cache_queries_total": ("prefix_queries", "sum"),
    "vllm:prefix_cache_hits_total": ("prefix_hits", "sum"),
    "vllm:gpu_prefix_cache_queries_total": ("prefix_queries_legacy", "sum"),
    "vllm:gpu_prefix_cache_hits_total": ("prefix_hits_legacy", "sum"),
    "vllm:num_preemptions_total": ("preemptions", "sum"),
    "vllm:prompt_tokens_total": ("prompt_tokens", "sum"),
    "vllm:generation_tokens_total": ("generation_tokens", "sum"),
    "vllm:request_success_total": ("requests_finished", "sum"),
    "vllm:time_to_first_token_seconds_sum": ("ttft_sum", "sum"),
    "vllm:time_to_first_token_seconds_count": ("ttft_count", "sum"),
    "vllm:inter_token_latency_seconds_sum": ("itl_sum", "sum"),
    "vllm:inter_token_latency_seconds_count": ("itl_count", "sum"),
    "vllm:time_per_output_token_seconds_sum": ("itl_sum_legacy", "sum"),
    "vllm:time_per_output_token_seconds_count": ("itl_count_legacy", "sum"),
    "vllm:request_queue_time_seconds_sum": ("queue_sum", "sum"),
    "vllm:request_queue_time_seconds_count": ("queue_count", "sum"),
    "vllm:e2e_request_latency_seconds_sum": ("e2e_sum", "sum"),
    "vllm:e2e_request_latency_seconds_count": ("e2e_count", "sum"),
}


@dataclass(slots=True)
class VllmSnapshot:
    """One replica's figures, engines summed. Counters are cumulative; None when absent."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float | None = None
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    preemptions: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    requests_finished: float | None = None
    ttft_sum: float | None = None
    ttft_count: float | None = None
    itl_sum: float | None = None
    itl_count: float | None = None
    queue_sum: float | None = None
    queue_count: float | None = None
    e2e_sum: float | None = None
    e2e_count: float | None = None
    legacy_names: list[str] = field(default_factory=list)


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq].strip().lstrip(",").strip()
        if eq + 1 >= n or text[eq + 1] != '"':
            raise MetricsParseError(f"bad label set: {text[:60]}")
        j = eq + 2
        buf = []
        while j < n and text[j] != '"':
            if text[j] == "\\" and j + 1 < n:
                j += 1
            buf.append(text[j])
            j += 1
        out[key] = "".join(buf)
        i = j + 1
    return out


def parse_vllm_metrics(text: str, model_name: str | None = None) -> VllmSnapshot:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    seen_gauge = False
    wanted = _WANTED
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            spec = wanted.get(name)
            if spec is None:
                continue
            close = line.rfind("}")
            if close < brace:
                raise MetricsParseError(f"unterminated label set: {line[:80]}")
            if model_name is not None:
                labels = _labels(line[brace + 1:close])
                if labels.get("model_name", model_name) != model_name:
                    continue
            rest = line[close + 1:].split()
        else:
            name = line[:space] if space != -1 else line
            spec = wanted.get(name)
            if spec is None:
                continue
            rest = line[space + 1:].split()
        if not rest:
            raise MetricsParseError(f"sample without a value: {line[:80]}")
        try:
            value = float(rest[0])
        except ValueError:
            raise MetricsParseError(f"bad sample value: {line[:80]}") from None
        if math.isnan(value):
            continue
        key = spec[0]
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1
        if key in ("running", "waiting"):
            seen_gauge = True
    if not seen_gauge:
        raise MetricsParseError("no vllm:num_requests_running or vllm:num_requests_waiting series")

    def get(key: str, how: str = "sum") -> float | None:
        if key not in sums:
            return None
        return sums[key] / counts[key] if how == "mean" else sums[key]

    snap = VllmSnapshot(running=sums.get("running", 0.0), waiting=sums.get("waiting", 0.0))
    for attr in ("prefix_queries", "prefix_hits", "kv_usage", "itl_sum", "itl_count"):
        how = "mean" if attr == "kv_usage" else "sum"
        new = get(attr, how)
        if new is None and f"{attr}_legacy" in sums:
            new = get(f"{attr}_legacy", how)
            snap.legacy_names.append(attr)
        setattr(snap, attr, new)
    for attr in ("preemptions", "prompt_tokens", "generation_tokens", "requests_finished", "ttft_sum",
                 "ttft_count", "queue_sum", "queue_count", "e2e_sum", "e2e_count"):
        setattr(snap, attr, get(attr))
    return snap
