"""Replica performance profiles: how long one vLLM engine step takes.

Form: ``step_s = base_s + prefill_token_s * P + prefill_attention_s * A + decode_seq_s * D
+ context_token_s * C`` where P is the prefill tokens in the step, A the attention pairs of
those prefill tokens (a chunk of t tokens after s computed ones attends over
``t * (s + (t + 1) / 2)`` positions: `prefill_attention`), D the decoding sequences and C the
context tokens those sequences attend over. `frontend_s` is the api server's own time per
request (HTTP, tokenizing, handing it to the engine), spent before the scheduler sees it.

Why linear: a vLLM step is one forward pass over the batch. Its cost has a
fixed part (reading all weights once, kernel launches, sampling: `base_s`), a
compute-bound part that grows with the tokens pushed through the GEMMs
(prefill: `prefill_token_s`), a small per-sequence part for decodes, and the
memory-bound attention read of each decode's KV cache (`context_token_s`).
This is the roofline decomposition Vidur and similar simulators fit per
operator; summed over a step it stays linear in these four counts, and it lets
a run of identical decode steps be integrated in closed form (see
`decode_steps_time`), which is what makes the simulator fast.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from policies.errors import UserError

INT32_MAX = 2**31 - 1


def prefill_attention(computed: int, tokens: int) -> float:
    """Attention pairs of a prefill chunk of `tokens` after `computed` tokens already in the
    KV cache: token i of the chunk attends over computed + i + 1 positions (causal)."""
    return tokens * (computed + (tokens + 1) / 2)


class FitTerm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    name: str
    value: float


class Calibration(BaseModel):
    """Where a fitted profile came from and how well the fit holds (kept in its YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    url: str = ""
    server: str = ""
    measured_at: str = ""
    points: int = Field(0, ge=0)
    duration_s: float = Field(0.0, ge=0)
    # Residuals of the fit over its points, relative to the measured value.
    residual_median: float = 0.0
    residual_p90: float = 0.0
    residual_max: float = 0.0
    terms_dropped: list[str] = []  # terms the data did not support (fitted at 0)
    notes: list[str] = []


class PerformanceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    model: str = ""
    gpu: str = ""
    # Upper bounds: a step over 10 s, or a count past int32, is a typo, not hardware.
    base_s: float = Field(gt=0, le=10)
    prefill_token_s: float = Field(ge=0, le=1)
    decode_seq_s: float = Field(ge=0, le=1)
    context_token_s: float = Field(ge=0, le=1)
    prefill_attention_s: float = Field(0.0, ge=0, le=1)
    frontend_s: float = Field(0.0, ge=0, le=10)
    block_size: int = Field(16, gt=0, le=INT32_MAX)
    num_gpu_blocks: int = Field(gt=0, le=INT32_MAX)
    max_num_seqs: int = Field(256, gt=0, le=INT32_MAX)
    max_num_batched_tokens: int = Field(8192, gt=0, le=INT32_MAX)
    max_model_len: int = Field(8192, gt=0, le=INT32_MAX)
    calibration: Calibration | None = None  # how `qscale calibrate` fitted this profile

    @model_validator(mode="after")
    def _kv_holds_one_full_request(self) -> PerformanceProfile:
        # vLLM refuses to start when the KV cache cannot hold one max_model_len request
        # (the engine core's KV-cache check); a simulated one would stall on such a prompt.
        if self.kv_capacity_tokens < self.max_model_len:
            raise ValueError(f"num_gpu_blocks x block_size = {self.kv_capacity_tokens} tokens cannot hold "
                             f"one max_model_len ({self.max_model_len}) request")
        return self

    def fits(self, prompt_tokens):
        """Can a request with this prompt (an int or a numpy array) be admitted at all? vLLM
        rejects a prompt that leaves no room for one output token within max_model_len (the
        profile guarantees the KV cache holds that much)."""
        return prompt_tokens + 1 <= self.max_model_len

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    def engine(self) -> dict:
        """This profile as a policy's `engine` parameter (`policies.engine.EngineParams`)."""
        return {"base_s": self.base_s, "prefill_token_s": self.prefill_token_s,
                "decode_seq_s": self.decode_seq_s, "context_token_s": self.context_token_s,
                "prefill_attention_s": self.prefill_attention_s, "kv_cache_tokens": self.kv_capacity_tokens, "max_num_seqs": self.max_num_seqs}

    def step_time(self, prefill_tokens: int, decode_seqs: int, context_tokens: float,
                  prefill_attention: float = 0.0) -> float:
        """One step's time; `prefill_attention` is the sum of `prefill_attention(...)` over its chunks."""
        return (
            self.base_s
            + self.prefill_token_s * prefill_tokens
            + self.prefill_attention_s * prefill_attention
            + self.decode_seq_s * decode_seqs
            + self.context_token_s * context_tokens
        )

    def decode_steps_time(self, steps: int, seqs: int, context0: float) -> float:
        """Time for `steps` pure-decode steps of `seqs` sequences whose contexts sum to `context0`.

        Each step adds one token to every sequence, so step k (0-based) attends
        over context0 + k * seqs tokens: an arithmetic series.
        """
        per_step = self.base_s + self.decode_seq_s * seqs
        return steps * per_step + self.context_token_s * (
            steps * context0 + seqs * steps * (steps - 1) / 2
        )

    def decode_steps_done(self, elapsed: float, seqs: int, context0: float) -> int:
        """How many whole decode steps fit in `elapsed` (inverse of `decode_steps_time`)."""
        if elapsed <= 0:
            return 0
        per_step = self.base_s + self.decode_seq_s * seqs
        qa = self.context_token_s * seqs / 2
        qb = per_step + self.context_token_s * (context0 - seqs / 2)
        # Positive root of qa k^2 + qb k - elapsed = 0, in the form that is stable as qa -> 0.
        k = 2 * elapsed / (qb + math.sqrt(qb * qb + 4 * qa * elapsed))
        steps = int(k)
        frac = k - steps
        # Guard against rounding, only where it can matter: right at a step boundary.
        if frac < 1e-6 and steps > 0 and self.decode_steps_time(steps, seqs, context0) > elapsed:
            return steps - 1
        if frac > 1 - 1e-6 and self.decode_steps_time(steps + 1, seqs, context0) <= elapsed:
            return steps + 1
        return steps


BUILTIN = ("llama3-8b-h100", "llama3-8b-a100", "llama31-8b-128k-h100")


def load_profile(name_or_path: str) -> PerformanceProfile:
    """A built-in profile by name, or a YAML file by path; any problem is a one-line `UserError`."""
    data = _yaml_mapping(name_or_path, _profile_text(name_or_path))
    try:
        return PerformanceProfile(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "profile"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise UserError(f"invalid profile {name_or_path}: {where}: {msg}") from None


def _profile_text(name_or_path: str) -> str:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"profile file not found: {path}")
        try:
            return path.read_text()
        except UnicodeDecodeError:
            raise UserError(f"invalid profile {name_or_path}: not UTF-8 text") from None
        except OSError as exc:
            raise UserError(f"cannot read profile {name_or_path}: {exc.strerror or exc}") from None
    if name_or_path in BUILTIN:
        return resources.files("simulations.profiles").joinpath(f"{name_or_path}.yaml").read_text()
    raise UserError(f"unknown profile {name_or_path!r} (built-in: {', '.join(BUILTIN)}, or a YAML path)")


def _yaml_mapping(name: str, text: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"invalid profile {name}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        got = "nothing" if data is None else type(data).__name__
        raise UserError(f"invalid profile {name}: expected a mapping of fields, got {got}")
    return data
