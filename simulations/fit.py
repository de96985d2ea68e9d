"""Fit the step-time model (`simulations/profile.py`) to measured observations.

Each observation is a stretch of engine time whose make-up is known: how many steps it
took, how many prefill tokens and prefill attention pairs, decode sequences and decode
context it pushed through those steps, and how many requests' frontend time it includes.
Its measured seconds are then linear in the profile's terms:

    seconds = base_s * steps + prefill_token_s * P + prefill_attention_s * A
              + decode_seq_s * D + context_token_s * C + frontend_s * R

The fit is least squares on relative error (a 2 ms step counts as much as a 2 s prefill),
with every term non-negative (a negative cost is not physics: such a term is dropped and
the rest refitted). A term is kept only where the data demands it: dropping it must make
the p90 relative residual worse by more than `KEEP_IF_BETTER_BY`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TERMS = ("base_s", "prefill_token_s", "prefill_attention_s", "decode_seq_s", "context_token_s", "frontend_s")
OPTIONAL = ("prefill_attention_s", "context_token_s", "decode_seq_s")
KEEP_IF_BETTER_BY = 0.02  # 2 % of p90 relative residual
# A point this far off the first fit (relative residual over max(OUTLIER_FLOOR, OUTLIER_MADS x the
# median) is a disturbance of the measurement (another process on the host), not engine behaviour.
OUTLIER_FLOOR, OUTLIER_MADS = 0.5, 5.0


@dataclass(frozen=True)
class Observation:
    label: str
    seconds: float
    steps: float = 0.0
    prefill_tokens: float = 0.0
    prefill_attention: float = 0.0
    decode_seq_steps: float = 0.0
    context_steps: float = 0.0
    requests: float = 0.0

    def features(self) -> list[float]:
        return [self.steps, self.prefill_tokens, self.prefill_attention, self.decode_seq_steps,
                self.context_steps, self.requests]


@dataclass(frozen=True)
class Fit:
    terms: dict[str, float]
    dropped: list[str]
    residuals: np.ndarray  # (fitted - measured) / measured, per kept observation
    outliers: list[Observation]  # left out of the fit (see OUTLIER_FLOOR)

    def quantile(self, q: float) -> float:
        return float(np.quantile(np.abs(self.residuals), q)) if len(self.residuals) else 0.0

    def worst(self) -> float:
        return float(np.max(np.abs(self.residuals))) if len(self.residuals) else 0.0


def _nonnegative_lstsq(x: np.ndarray, y: np.ndarray, active: list[int]) -> dict[int, float]:
    """Least squares over the `active` columns; a negative coefficient leaves and the rest refit."""
    active = list(active)
    while active:
        coef, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (coef >= 0).all():
            return dict(zip(active, coef.tolist(), strict=True))
        active.pop(int(np.argmin(coef)))
    return {}


def _solve(obs: list[Observation], active: list[int]) -> tuple[dict[int, float], np.ndarray]:
    x = np.array([o.features() for o in obs], dtype=float)
    y = np.array([o.seconds for o in obs], dtype=float)
    scale = 1.0 / y[:, None]  # relative error
    coef = _nonnegative_lstsq(x * scale, np.ones(len(y)), active)
    fitted = x[:, list(coef)] @ np.array(list(coef.values())) if coef else np.zeros(len(y))
    return coef, (fitted - y) / y


def _p90(res: np.ndarray) -> float:
    return float(np.quantile(np.abs(res), 0.9))


def _without_outliers(obs: list[Observation], active: list[int]) -> tuple[list[Observation], list[Observation]]:
    _coef, res = _solve(obs, active)
    limit = max(OUTLIER_FLOOR, OUTLIER_MADS * float(np.median(np.abs(res))))
    kept = [o for o, r in zip(obs, res, strict=True) if abs(r) <= limit]
    if len(kept) < len(TERMS) + 2:
        return obs, []
    return kept, [o for o, r in zip(obs, res, strict=True) if abs(r) > limit]


def fit_step_model(obs: list[Observation]) -> Fit:
    """Fit every term the observations can carry, then drop optional ones the data does not need."""
    if len(obs) < len(TERMS) + 2:
        raise ValueError(f"need at least {len(TERMS) + 2} observations to fit, got {len(obs)}")
    if any(not np.isfinite(o.seconds) or o.seconds <= 0 for o in obs):
        raise ValueError("every observation needs a positive, finite duration")
    active = [i for i, _ in enumerate(TERMS) if any(o.features()[i] > 0 for o in obs)]
    obs, outliers = _without_outliers(obs, active)
    coef, res = _solve(obs, active)
    for name in OPTIONAL:
        i = TERMS.index(name)
        if i not in active:
            continue
        trial = [j for j in active if j != i]
        trial_coef, trial_res = _solve(obs, trial)
        if _p90(trial_res) <= _p90(res) + KEEP_IF_BETTER_BY:
            active, coef, res = trial, trial_coef, trial_res
    terms = {name: float(coef.get(i, 0.0)) for i, name in enumerate(TERMS)}
    dropped = [name for i, name in enumerate(TERMS) if i not in coef]
    return Fit(terms, dropped, res, outliers)
