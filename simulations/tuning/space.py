"""A policy's search space, suggested per trial and perturbed for the sensitivity report."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from policies import registry
from policies.errors import UserError
from policies.tunable import Tunable, search_space


def space_for(policy: str, fixed: dict[str, Any], ceiling: int) -> dict[str, Tunable]:
    """The policy's declared space, less what the user fixed; `min_replicas` stays under the
    fleet's ceiling. A policy that declares nothing cannot be tuned: a one-line error."""
    declared = search_space(registry.get(policy).Params)
    space = {name: t for name, t in declared.items() if name not in fixed}
    if "min_replicas" in space and not space["min_replicas"].categorical:
        t = space["min_replicas"]
        assert t.low is not None and t.high is not None
        high = min(t.high, min(int(fixed.get("max_replicas", ceiling)), ceiling) - 1)
        if high > t.low:
            space["min_replicas"] = replace(t, high=high)
        else:
            del space["min_replicas"]
    if not space:
        why = "declares no Tunable parameters" if not declared else "has every tunable parameter fixed by --set"
        raise UserError(f"policy {policy!r} {why}: nothing to tune")
    return space


def suggest(trial: Any, space: dict[str, Tunable]) -> dict[str, Any]:
    """One value per parameter from an Optuna trial."""
    values: dict[str, Any] = {}
    for name, t in space.items():
        if t.categorical:
            values[name] = trial.suggest_categorical(name, list(t.choices))
        elif t.integer:
            values[name] = trial.suggest_int(name, int(t.low), int(t.high), log=t.log)
        else:
            values[name] = _significant(trial.suggest_float(name, float(t.low), float(t.high), log=t.log))
    return values


def _significant(value: float, digits: int = 3) -> float:
    """Three significant digits: what is run is what the config file says, and it reads well."""
    return float(f"{value:.{digits}g}")


def neighbours(name: str, value: Any, t: Tunable, step: float = 0.2) -> list[tuple[str, Any]]:
    """The values `step` (20 %) below and above `value`, kept in the declared range (whole
    numbers move by at least one); for a choice, every other choice. (label, value) pairs."""
    if t.categorical:
        return [(f"{name}={c}", c) for c in t.choices if c != value]
    out = []
    for sign in (-1, 1):
        moved = value * (1 + sign * step)
        if t.integer:
            moved = value + sign * max(1, round(abs(value) * step))
        clipped = t.clip(moved)
        if not t.integer:
            clipped = _significant(clipped)
        if clipped != value:
            out.append((f"{name} {value:g} -> {clipped:g}", clipped))
    return out
