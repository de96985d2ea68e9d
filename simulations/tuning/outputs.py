"""The search's results on disk: a config `qscale run` accepts, and the Pareto plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial

from policies.errors import UserError
from simulations.tuning.attrs import ATTAINMENT, GPU_HOURS
from simulations.tuning.report import PartReport
from simulations.tuning.setup import StudySetup


def config_text(setup: StudySetup, params: dict[str, Any], header: list[str], target_name: str = "llm") -> str:
    """A `qscale run` config with one target running the chosen parameters. The backend is
    local (emulated) so it runs as written; for a cluster set `backend: kubernetes` and add
    `kubernetes: {deployment: ...}` (README)."""
    chosen = {**setup.fixed, **params}
    max_replicas = int(chosen.get("max_replicas", setup.max_replicas))
    min_replicas = int(chosen.get("min_replicas", 0))
    config = {"targets": [{
        "name": target_name,
        "backend": "local",
        "policy": setup.policy,
        "profile": setup.profile,
        "params": {"max_replicas": max_replicas, **setup.fixed, **params},
        "limits": {"min_replicas": min_replicas, "max_replicas": max_replicas},
    }]}
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header)
    return comment + yaml.safe_dump(config, sort_keys=False)


def report_lines(reports: list[PartReport], slo_target: float) -> list[str]:
    lines = []
    for rep in reports:
        where = "held-out part" if rep.held_out else "tuning part (nothing held out)"
        lines.append(f"{rep.label}, {where} (static-best: {rep.static_best_replicas} replicas; tuned and "
                     f"defaults start with {rep.warm_replicas}, the tuning part's static-best):")
        lines.append(f"  {'':<12} {'SLO att.':>9} {'GPU-h':>8} {'x oracle':>9} {'x static':>9}")
        for r in rep.rows:
            mark = "" if r.attainment >= slo_target else "  below target"
            lines.append(f"  {r.label:<12} {r.attainment:>9.2%} {r.gpu_hours:>8.2f} {_x(r.x_oracle):>9} "
                         f"{_x(r.x_static_best):>9}{mark}")
    return lines


def _x(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def plot_pareto(trials: list[FrozenTrial], chosen: FrozenTrial | None, slo_target: float, path: Path,
                title: str) -> None:
    """SLO attainment against GPU-hours over every finished trial, the front and the choice."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the Pareto plot needs matplotlib: pip install 'qscale[plot]'") from None
    gpu = [t.user_attrs[GPU_HOURS] for t in trials]
    att = [t.user_attrs[ATTAINMENT] * 100 for t in trials]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(gpu, att, s=14, color="tab:gray", alpha=0.7, label="trial")
    front = _front(list(zip(gpu, att, strict=True)))
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue", lw=1,
                label="Pareto front")
    ax.axhline(slo_target * 100, color="crimson", lw=0.8, ls="--", label=f"target {slo_target:.1%}")
    if chosen is not None:
        ax.scatter([chosen.user_attrs[GPU_HOURS]], [chosen.user_attrs[ATTAINMENT] * 100], s=160, marker="*",
                   color="tab:orange", zorder=5, label=f"chosen (trial {chosen.number + 1})")
    ax.set_xlabel("GPU-hours (tuning part, all traces)")
    ax.set_ylabel("SLO attainment, lowest over traces (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both: cheaper and at least as good."""
    front: list[tuple[float, float]] = []
    for gpu, att in sorted(points):
        if not front or att > front[-1][1]:
            front.append((gpu, att))
    return front
