"""One PNG per comparison: a panel per policy with replicas (ready, starting), demand,
queue depth and TTFT p99 over time."""

from __future__ import annotations

from pathlib import Path

from policies.errors import UserError
from simulations.runner import SimResult


def plot_comparison(results: dict[str, SimResult], path: str | Path, slo_ttft_s: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'qscale[plot]'") from None

    names = [n for n, r in results.items() if r.timeline]  # `bound` is not a run: nothing to draw
    if not names:
        raise UserError("--plot: nothing to draw (bound is not a simulated run)")
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 2.8 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        r = results[name]
        t = [row.t / 60 for row in r.timeline]
        ax.fill_between(t, [row.ready for row in r.timeline], step="post", alpha=0.35, label="ready", color="tab:blue")
        ax.step(t, [row.ready + row.starting for row in r.timeline], where="post", color="tab:orange",
                lw=1, label="ready + starting")
        ax.set_ylabel("replicas")
        twin = ax.twinx()
        twin.plot(t, [row.arrival_rate for row in r.timeline], color="tab:gray", lw=0.8, label="arrivals/s")
        twin.plot(t, [row.waiting for row in r.timeline], color="tab:red", lw=0.8, label="queue depth")
        twin.set_ylabel("req/s, queued")
        ttft = [(row.t / 60, row.ttft_p99_s) for row in r.timeline if row.ttft_p99_s is not None]
        over = [x for x, y in ttft if y > slo_ttft_s]
        if over:
            ax.plot(over, [0] * len(over), "|", color="crimson", ms=12, label=f"TTFT p99 > {slo_ttft_s:g}s")
        ratio = f"{r.gpu_hours / r.oracle_gpu_hours:.2f}x oracle" if r.oracle_gpu_hours else ""
        ax.set_title(
            f"{name}: SLO {r.slo_attainment:.1%}, TTFT p99 {r.ttft_p99_s or 0:.2f}s, "
            f"{r.gpu_hours:.1f} GPU-h {ratio}, {r.scale_events} scale events",
            fontsize=10, loc="left",
        )
        lines = ax.get_legend_handles_labels()
        lines2 = twin.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=7, ncol=5)
    axes[-1, 0].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
