"""The step-time fit on observations made from known constants (chosen here, by hand), with noise."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.fit import Observation, fit_step_model

# A made-up engine: 2 ms a step, 30 us a prefill token, 1e-8 s an attention pair, 0.1 ms a
# decoding sequence, 40 ns a context token, 3 ms of frontend per request.
TRUTH = {"base_s": 2e-3, "prefill_token_s": 3e-5, "prefill_attention_s": 1e-8, "decode_seq_s": 1e-4,
         "context_token_s": 4e-8, "frontend_s": 3e-3}


def prefill(p: int, truth: dict, noise: float) -> Observation:
    attention = p * (p + 1) / 2  # one chunk from position 0: token i attends over i + 1 positions
    secs = truth["frontend_s"] + truth["base_s"] + truth["prefill_token_s"] * p + truth["prefill_attention_s"] * attention
    return Observation(f"prefill {p}", secs * noise, steps=1, prefill_tokens=p, prefill_attention=attention, requests=1)


def decode(c: int, ctx: int, steps: int, truth: dict, noise: float) -> Observation:
    per_step = truth["base_s"] + truth["decode_seq_s"] * c + truth["context_token_s"] * c * ctx
    return Observation(f"decode {c}x{ctx}", per_step * steps * noise, steps=steps, decode_seq_steps=c * steps,
                       context_steps=c * ctx * steps)


def observations(truth: dict, seed: int = 1, noise: float = 0.03) -> list[Observation]:
    rng = np.random.default_rng(seed)
    jitter = lambda: 1 + rng.uniform(-noise, noise)  # noqa: E731
    obs = [prefill(p, truth, jitter()) for p in (16, 64, 256, 1024, 2048, 4096, 8000) for _ in range(3)]
    obs += [decode(c, ctx, 50, truth, jitter()) for c in (1, 4, 16, 64, 256) for ctx in (100, 4000) for _ in range(2)]
    return obs


def test_recovers_every_term_within_ten_percent():
    fit = fit_step_model(observations(TRUTH))
    for name, value in TRUTH.items():
        assert fit.terms[name] == pytest.approx(value, rel=0.10), name
    assert fit.dropped == []
    assert fit.quantile(0.9) < 0.04


def test_drops_terms_the_data_does_not_need():
    truth = {**TRUTH, "prefill_attention_s": 0.0, "context_token_s": 0.0}
    fit = fit_step_model(observations(truth))
    assert set(fit.dropped) == {"prefill_attention_s", "context_token_s"}
    assert fit.terms["base_s"] == pytest.approx(2e-3, rel=0.10)
    assert fit.terms["decode_seq_s"] == pytest.approx(1e-4, rel=0.10)


def test_a_disturbed_point_is_left_out_not_fitted():
    obs = observations(TRUTH)
    disturbed = Observation("decode stalled", obs[-1].seconds * 8, obs[-1].steps, decode_seq_steps=obs[-1].decode_seq_steps,
                            context_steps=obs[-1].context_steps)
    fit = fit_step_model([*obs, disturbed])
    assert [o.label for o in fit.outliers] == ["decode stalled"]
    assert fit.terms["base_s"] == pytest.approx(2e-3, rel=0.10)


def test_refuses_too_few_or_absurd_points():
    with pytest.raises(ValueError, match="at least"):
        fit_step_model(observations(TRUTH)[:5])
    bad = observations(TRUTH)
    bad[0] = Observation("nan", float("nan"), steps=1)
    with pytest.raises(ValueError, match="positive, finite"):
        fit_step_model(bad)
