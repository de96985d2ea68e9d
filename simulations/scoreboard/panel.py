"""The panel of traffic shapes: each at a small load (about 5-10 replicas) and a large one
(about 30-60), each with a short (60 s) and a long (240 s) cold start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

H100 = "llama3-8b-h100"
LONG_CONTEXT = "llama31-8b-128k-h100"
COLD_STARTS = (60.0, 240.0)


@dataclass(frozen=True)
class Shape:
    """One traffic shape: a trace (or synthetic spec with `{scale}`-free rates) at two loads."""

    name: str
    trace: str
    small: float  # rate scale of the small load
    large: float  # rate scale of the large load
    duration_s: float | None = None  # slice of the trace; None: all of it
    large_duration_s: float | None = None  # shorter for the large load (run time)
    profile: str = H100
    slo_ttft_s: float = 2.0
    what: str = ""


@dataclass(frozen=True)
class Cell:
    shape: str
    load: str  # "small" or "large"
    cold_start_s: float
    trace: str
    rate_scale: float
    duration_s: float | None
    profile: str = H100
    slo_ttft_s: float = 2.0

    @property
    def name(self) -> str:
        return f"{self.shape}/{self.load}/cs{self.cold_start_s:g}"


def shapes(traces: Path) -> list[Shape]:
    conv, code = traces / "AzureLLMInferenceTrace_conv.csv", traces / "AzureLLMInferenceTrace_code.csv"
    mooncake = traces / "mooncake_synthetic_trace.jsonl"
    return [
        Shape("azure-conv", str(conv), 10, 45, 1800, 900,
              what="Azure 2023 conversation trace, rate x10 / x45"),
        Shape("azure-code", str(code), 20, 90, 1800, 900,
              what="Azure 2023 code trace (bursty), rate x20 / x90"),
        Shape("mooncake-128k", str(mooncake), 3, 15, None, None, profile=LONG_CONTEXT, slo_ttft_s=5.0,
              what="Mooncake synthetic trace (prompts 12k median, prefix reuse), 128k-context H100, TTFT SLO 5 s"),
        Shape("mmpp-bursts", "synthetic:mmpp?low=20&high=80&mean_low_s=240&mean_high_s=45&duration=1800&seed=3",
              1, 5.5, None, None, what="x4 bursts of 45 s on average, shorter than a cold start"),
        Shape("diurnal-swell", "synthetic:diurnal?rate=50&amplitude=0.6&period_s=2400&phase_s=-600&duration=2400",
              1, 4.5, None, None, what="one slow swell over 40 minutes, 0.4x to 1.6x the mean rate"),
        Shape("step", "synthetic:step?low=15&high=60&at=800&until=1400&duration=1800",
              1, 6, None, None, what="a sustained x4 step up after 800 s, down 10 minutes later"),
        Shape("heavy-tail", "synthetic:poisson?rate=45&output_sigma=1.6&output_max=4000&duration=1800",
              1, 6, None, 900, what="Poisson arrivals, heavy-tailed output lengths (p99 ~2.5k tokens)"),
    ]


def default_panel(traces: Path, quick: bool = False) -> list[Cell]:
    """28 cells (7 shapes x 2 loads x 2 cold starts); `quick`: small loads, 240 s cold start,
    first 600 s of each shape (a smoke test of the whole pipeline)."""
    cells = []
    for s in shapes(traces):
        for load in ("small",) if quick else ("small", "large"):
            scale = s.small if load == "small" else s.large
            duration = s.duration_s if load == "small" else (s.large_duration_s or s.duration_s)
            if quick:
                duration = 600.0
            for cold in COLD_STARTS[-1:] if quick else COLD_STARTS:
                cells.append(Cell(s.name, load, cold, s.trace, scale, duration, s.profile, s.slo_ttft_s))
    return cells
