"""What a vLLM server tells about itself: `/v1/models` and `/metrics`."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from policies.errors import UserError


@dataclass(frozen=True)
class ServerFacts:
    url: str
    model: str
    max_model_len: int
    block_size: int
    num_gpu_blocks: int
    prefix_caching: bool
    version: str  # from the cache-config info labels where present, else ""

    @property
    def kv_tokens(self) -> int:
        return self.block_size * self.num_gpu_blocks


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=15)) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise UserError(f"cannot reach {url}: {type(exc).__name__}: {exc}".rstrip(": ")) from None


async def _model(session: aiohttp.ClientSession, base: str, wanted: str | None) -> tuple[str, int]:
    status, body = await _get(session, f"{base}/v1/models")
    if status != 200:
        raise UserError(f"{base}/v1/models answered HTTP {status}: not an OpenAI-compatible server")
    try:
        models = [m for m in __import__("json").loads(body)["data"] if isinstance(m, dict)]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{base}/v1/models did not answer a model list") from None
    if not models:
        raise UserError(f"{base}/v1/models lists no model")
    chosen = next((m for m in models if m.get("id") == wanted), None) if wanted else models[0]
    if chosen is None:
        raise UserError(f"model {wanted!r} is not served at {base} (served: "
                        f"{', '.join(str(m.get('id')) for m in models)})")
    length = chosen.get("max_model_len")
    if not isinstance(length, int) or length < 2:
        raise UserError(f"{base}/v1/models gives no max_model_len: is this vLLM?")
    return str(chosen["id"]), length


def _cache_config(text: str, base: str) -> dict[str, str]:
    try:
        families = {f.name: f for f in text_string_to_metric_families(text)}
    except ValueError as exc:
        raise UserError(f"{base}/metrics is not Prometheus text: {exc}") from None
    if "vllm:num_requests_waiting" not in families:
        raise UserError(f"{base}/metrics has no vllm:num_requests_waiting: not a vLLM server")
    info = families.get("vllm:cache_config_info")
    if info is None or not info.samples:
        raise UserError(f"{base}/metrics has no vllm:cache_config_info: vLLM too old to calibrate against")
    return dict(info.samples[0].labels)


def _int_label(labels: dict[str, str], name: str, base: str) -> int:
    try:
        value = int(labels[name])
    except (KeyError, ValueError):
        raise UserError(f"{base}/metrics: vllm:cache_config_info has no integer {name}") from None
    if value <= 0:
        raise UserError(f"{base}/metrics: vllm:cache_config_info {name} is {value}")
    return value


async def read_facts(session: aiohttp.ClientSession, base: str, model: str | None = None) -> ServerFacts:
    """The server's model, context limit and KV cache, or a one-line UserError."""
    name, max_len = await _model(session, base, model)
    status, body = await _get(session, f"{base}/metrics")
    if status != 200:
        raise UserError(f"{base}/metrics answered HTTP {status}: not a vLLM server")
    labels = _cache_config(body.decode(errors="replace"), base)
    return ServerFacts(
        url=base, model=name, max_model_len=max_len, block_size=_int_label(labels, "block_size", base),
        num_gpu_blocks=_int_label(labels, "num_gpu_blocks", base),
        prefix_caching=labels.get("enable_prefix_caching", "False") == "True", version=labels.get("version", ""))


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """vLLM's samples (name -> value, summed over labels; buckets as `name_bucket:BOUND`)."""
    _status, body = await _get(session, f"{base}/metrics")
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body.decode(errors="replace")):
        if not fam.name.startswith("vllm:"):
            continue
        for s in fam.samples:
            # Histogram buckets keep their bound: `name_bucket:0.3`.
            key = f"{s.name}:{float(s.labels['le']):g}" if s.name.endswith("_bucket") else s.name
            out[key] = out.get(key, 0.0) + s.value
    return out
