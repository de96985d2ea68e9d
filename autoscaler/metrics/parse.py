"""A fast parser for vLLM's Prometheus text exposition, reading only what the autoscaler needs.

* sums over the `engine` label (one series per engine core under data parallelism; V0 and
  early V1 have no `engine` label at all);
* keeps only series whose `model_name` matches, when a model name is given;
* reads new names and falls back to old ones (`kv_cache_usage_perc` then
  `gpu_cache_usage_perc`; `prefix_cache_*` then `gpu_prefix_cache_*`;
  `inter_token_latency_seconds` then `time_per_output_token_seconds`).

Only the wanted families are visited (`str.find` jumps between their lines), so a 600-line
real exposition costs little more than its ~60 interesting lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.figures import ReplicaFigures


class MetricsParseError(ValueError):
    """The body is not a Prometheus exposition with vLLM's gauges."""


# sample name -> (field, how): "sum" over engines, "mean" over engines.
_WANTED: dict[str, tuple[str, str]] = {
    "vllm:num_requests_running": ("running", "sum"),
    "vllm:num_requests_waiting": ("waiting", "sum"),
    "vllm:kv_cache_usage_perc": ("kv_cache_usage", "mean"),
    "vllm:gpu_cache_usage_perc": ("kv_cache_usage_legacy", "mean"),
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


@dataclass(frozen=True, slots=True)
class ParsedMetrics:
    """A replica's figures, and the figures read under their old names (e.g. `gpu_cache_usage_perc`)."""

    figures: ReplicaFigures
    legacy_names: tuple[str, ...] = ()


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


def _model_of(labels_text: str, default: str) -> str:
    """The `model_name` label's value (fast path without escapes; full parse otherwise)."""
    i = labels_text.find('model_name="')
    if i == -1:
        return default
    if i > 0 and labels_text[i - 1] not in ", {":
        return _labels(labels_text).get("model_name", default)
    start = i + 12
    end = labels_text.find('"', start)
    value = labels_text[start:end]
    if "\\" in value or end == -1:
        return _labels(labels_text).get("model_name", default)
    return value


def _samples(text: str, name: str):
    """Yield (labels text or None, value text) for every sample line of `name`.

    `str.find` jumps straight to each occurrence, so the hundreds of histogram-bucket
    lines between them are never looked at in Python.
    """
    needle = "\n" + name
    n = len(name)
    i = text.find(needle)  # callers pass text that starts with a newline
    while i != -1:
        start = i + 1
        after = start + n
        ch = text[after:after + 1]
        end = text.find("\n", after)
        if end == -1:
            end = len(text)
        if ch == "{":
            close = text.find("}", after, end)
            if close == -1:
                raise MetricsParseError(f"unterminated label set: {text[start:start + 80]}")
            rest = text[close + 1:end].split()
            labels = text[after + 1:close]
        elif ch in (" ", "\t"):
            rest = text[after:end].split()
            labels = None
        else:
            i = text.find(needle, end)
            continue  # a longer name sharing the prefix (e.g. ..._waiting_by_reason)
        if not rest:
            raise MetricsParseError(f"sample without a value: {text[start:end][:80]}")
        yield labels, rest[0]
        i = text.find(needle, end)


def _family_of(sample: str) -> set[str]:
    out = {sample}
    for suffix in ("_total", "_sum", "_count"):
        if sample.endswith(suffix):
            out.add(sample[: -len(suffix)])
    return out


_WANTED_FAMILIES = set().union(*(_family_of(n) for n in _WANTED))


def _wanted_blocks(text: str):
    """Yield the text of every family block whose `# TYPE` names a wanted family.

    Families are contiguous in an exposition, each opened by `# HELP`/`# TYPE` comments,
    so one forward pass of `str.find` over comment lines skips the unwanted blocks (most
    of them histogram buckets) without looking at their lines.
    """
    pos = 0
    n = len(text)
    while True:
        i = text.find("# TYPE ", pos)
        if i == -1:
            return
        eol = text.find("\n", i)
        if eol == -1:
            return
        family, _, kind = text[i + 7:eol].partition(" ")
        nxt = text.find("\n#", eol)
        block_end = n if nxt == -1 else nxt
        if family in _WANTED_FAMILIES:
            yield family, kind.strip(), text[eol + 1:block_end]
        pos = block_end


def _block_samples(block: str):
    for line in block.split("\n"):
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            close = line.rfind("}")
            if close < brace:
                raise MetricsParseError(f"unterminated label set: {line[:80]}")
            rest = line[close + 1:].split()
            name, labels = line[:brace], line[brace + 1:close]
        else:
            if space == -1:
                raise MetricsParseError(f"sample without a value: {line[:80]}")
            name, labels, rest = line[:space], None, line[space + 1:].split()
        if not rest:
            raise MetricsParseError(f"sample without a value: {line[:80]}")
        yield name, labels, rest[0]


def _all_samples(text: str):
    if "# TYPE " in text:
        for family, kind, block in _wanted_blocks(text):
            if kind == "histogram":
                # Only _sum and _count are read: jump to them past the bucket lines.
                for suffix in ("_sum", "_count"):
                    for labels, raw in _samples("\n" + block, family + suffix):
                        yield family + suffix, labels, raw
            else:
                yield from _block_samples(block)
        return
    # No TYPE comments (allowed by the format): look each wanted name up directly.
    text = "\n" + text
    for name in _WANTED:
        for labels, raw in _samples(text, name):
            yield name, labels, raw


def _value(name: str, raw: str) -> float:
    """A sample's value: a finite, non-negative number in the exposition's own syntax."""
    if "_" in raw:
        raise MetricsParseError(f"bad sample value for {name}: {raw[:40]}")  # float() takes 1_000
    try:
        value = float(raw)
    except ValueError:
        raise MetricsParseError(f"bad sample value for {name}: {raw[:40]}") from None
    if not math.isfinite(value) or value < 0:
        raise MetricsParseError(f"{name} is {raw[:40]}: not a finite, non-negative number")
    return value


def _sums(text: str, model_name: str | None) -> tuple[dict[str, float], dict[str, int]]:
    """Sum (and count) every wanted sample of the model, by field."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, labels_text, raw in _all_samples(text):
        spec = _WANTED.get(name)
        if spec is None:
            continue  # e.g. a histogram's _bucket lines
        if model_name is not None and labels_text and _model_of(labels_text, model_name) != model_name:
            continue
        key = spec[0]
        sums[key] = sums.get(key, 0.0) + _value(name, raw)
        counts[key] = counts.get(key, 0) + 1
    for key in ("running", "waiting"):
        if key not in sums:  # vLLM always has both: one missing would read as 0, low
            raise MetricsParseError(f"no vllm:num_requests_{key} series"
                                    + (f" for model {model_name}" if model_name else ""))
    return sums, counts


def parse_exposition(text: str, model_name: str | None = None) -> ParsedMetrics:
    """The replica's figures from one /metrics body. Raises MetricsParseError on a body that is
    not vLLM's exposition, or on a NaN, infinite or negative value (the replica is then
    unreadable this tick: a wrong number must never reach the policy)."""
    sums, counts = _sums(text, model_name)

    def get(key: str) -> float | None:
        if key not in sums:
            return None
        return sums[key] / counts[key] if key.startswith("kv_cache_usage") else sums[key]

    values: dict[str, float | None] = {}
    legacy: list[str] = []
    for key in ("prefix_queries", "prefix_hits", "kv_cache_usage", "itl_sum", "itl_count"):
        values[key] = get(key)
        if values[key] is None and f"{key}_legacy" in sums:
            values[key] = get(f"{key}_legacy")
            legacy.append(key)
    for key in ("preemptions", "prompt_tokens", "generation_tokens", "requests_finished", "ttft_sum",
                "ttft_count", "queue_sum", "queue_count", "e2e_sum", "e2e_count"):
        values[key] = get(key)
    figures = ReplicaFigures(running=sums.get("running", 0.0), waiting=sums.get("waiting", 0.0), **values)
    return ParsedMetrics(figures, tuple(legacy))


def parse_vllm_metrics(text: str, model_name: str | None = None) -> ReplicaFigures:
    return parse_exposition(text, model_name).figures
