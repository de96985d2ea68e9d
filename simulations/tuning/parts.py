"""Each trace split in time: the first part to tune on, the last part held out to report on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from policies.errors import UserError
from simulations.compare import Workbench
from simulations.runner import SimConfig
from simulations.traffic import load_traffic


class TraceSpec(BaseModel):
    """One trace as the user gave it: source, rate scale, and the slice considered."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    rate_scale: float = Field(1.0, gt=0)
    start_s: float = Field(0.0, ge=0)
    duration_s: float | None = Field(None, gt=0)
    columns: str | None = None  # `--columns` of a request log, as the user wrote it

    @property
    def label(self) -> str:
        if self.source.startswith("synthetic:"):
            return self.source.split("?")[0]
        return Path(self.source).stem

    def traffic(self, seed: int = 0, rate_scale: float | None = None):
        from simulations.traffic.columns import ColumnMap

        columns = ColumnMap.parse(self.columns) if self.columns else None
        rate = self.rate_scale if rate_scale is None else rate_scale
        return load_traffic(self.source, rate, self.start_s, self.duration_s, seed=seed, columns=columns)


def span_s(spec: TraceSpec) -> float:
    """Seconds from the slice's start to its last arrival (read once through the trace)."""
    last = 0.0
    for chunk in spec.traffic(rate_scale=1.0):
        if len(chunk):
            last = float(chunk.arrival[-1])
    return last


def split(spec: TraceSpec, holdout: float) -> tuple[TraceSpec, TraceSpec | None]:
    """(tuning part, held-out part): the held-out part is the last `holdout` share of the
    slice's time, so the tuning never sees what it is judged on. The two are disjoint
    ([start, cut) and [cut, end)) and stay inside the slice. No held-out part at 0."""
    if holdout <= 0:
        return spec, None
    cut = span_s(spec) * (1.0 - holdout)
    tune = spec.model_copy(update={"duration_s": cut})
    rest = None if spec.duration_s is None else spec.duration_s - cut  # None: to the trace's end
    held = spec.model_copy(update={"start_s": spec.start_s + cut, "duration_s": rest})
    return tune, held


def check_long_enough(spec: TraceSpec, holdout: float, needed_s: float) -> None:
    """Both parts must outlast the warm-up and a cold start, or every policy just holds its
    warm fleet there and the comparison says nothing: a one-line error naming the fix."""
    span = span_s(spec)
    parts = {"tuning": span * (1.0 - holdout), "held-out": span * holdout} if holdout > 0 else {"tuning": span}
    for name, seconds in parts.items():
        if seconds < needed_s:
            raise UserError(f"{spec.label}: the {name} part is {seconds:.0f} s, shorter than the warm-up plus a "
                            f"cold start ({needed_s:.0f} s); use a longer trace or --duration, or another --holdout")


@dataclass
class Part:
    """One part of one trace on its own workbench (its work, warm start and bound)."""

    label: str
    spec: TraceSpec
    bench: Workbench
    duration_s: float

    @property
    def servable(self) -> int:
        """Requests the profile can serve at all (what attainment is counted over)."""
        t = self.bench.work.totals
        return t.requests - t.rejected

    @property
    def bound_gpu_hours(self) -> float:
        return max(self.bench.work.bound_gpu_hours(), 1e-9)


def build_part(label: str, spec: TraceSpec, cfg: SimConfig, ceiling: int, slo_target: float | None) -> Part:
    """With `slo_target`, every run on the part starts with static-best's fleet, as the
    held-out report's runs (after `Workbench.references`) and `qscale simulate`'s do: trials
    are judged on the same warm start they are reported on."""
    bench = Workbench(lambda: spec.traffic(cfg.seed), cfg, ceiling)
    if slo_target is not None:
        bench.warm_start_from_static_best(slo_target)
    return Part(label, spec, bench, max(bench.work.duration_s, 1.0))


def duration_label(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
