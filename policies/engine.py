"""What one replica can do, in work: the step-time model of a vLLM engine.

A policy that sizes a fleet in work, not in requests, needs to know how many
replica-seconds a request costs. `EngineParams` carries the same linear
step-time model as the simulator's performance profiles (`base_s` per step,
`prefill_token_s` per prefill token, `decode_seq_s` per decoding sequence,
`context_token_s` per context token attended over), plus the two limits that
cap the batch: the KV cache and `max_num_seqs`. Defaults: Llama-3-8B on an
H100 (`simulations/profiles/llama3-8b-h100.yaml`); `PerformanceProfile.engine()`
gives any profile's values.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EngineParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base_s: float = Field(0.0063, gt=0)
    prefill_token_s: float = Field(3.2e-05, ge=0)
    decode_seq_s: float = Field(7.0e-05, ge=0)
    context_token_s: float = Field(3.9e-08, ge=0)
    prefill_attention_s: float = Field(0.0, ge=0, description="per attention pair of a prefill (calibrated profiles)")
    kv_cache_tokens: int = Field(400_000, gt=0, description="num_gpu_blocks x block_size")
    max_num_seqs: int = Field(256, gt=0)
    kv_fill: float = Field(0.9, gt=0, le=1, description="share of the KV cache a full batch uses")

    def batch(self, context_per_request: float) -> float:
        """Most requests that decode together: `max_num_seqs`, or fewer when the KV cache is full."""
        by_kv = self.kv_cache_tokens * self.kv_fill / max(context_per_request, 1.0)
        return max(1.0, min(float(self.max_num_seqs), by_kv))

    def request_seconds(self, prompt: float, computed_prompt: float, output: float,
                        context: float | None = None) -> float:
        """Replica-seconds one request costs at the largest batch the KV cache allows.

        Its prefill (`computed_prompt` tokens: the prompt less prefix-cache hits), plus
        `output` decode steps, each costing its share of a full batch's step. `context`:
        the KV tokens a running request holds on average (default: prompt + output / 2;
        measured, it is larger when long outputs hold the cache longest).
        """
        context = max(prompt + output / 2.0, context or 0.0)
        per_token = self.base_s / self.batch(context) + self.decode_seq_s + self.context_token_s * context
        cached = max(prompt - computed_prompt, 0.0)
        # Each computed prompt token attends over the cached ones and those before it.
        attention = computed_prompt * (cached + (computed_prompt + 1) / 2.0)
        return self.prefill_token_s * computed_prompt + self.prefill_attention_s * attention + output * per_token


def with_engine(policy: str, params: dict[str, Any], engine: dict[str, Any] | None) -> dict[str, Any]:
    """`params` with `engine` filled in when the policy has that parameter (fields the user set
    win): the hardware is a fact of the deployment (its performance profile), not a knob."""
    from policies.registry import registry

    if engine is None or "engine" not in registry.get(policy).Params.model_fields:
        return params
    given = params.get("engine")
    if isinstance(given, dict):  # the user's fields over the deployment's
        return {**params, "engine": {**engine, **given}}
    if given is not None:
        return params
    return {**params, "engine": engine}
