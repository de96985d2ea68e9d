"""Compare policies on one traffic stream: every policy and the three reference points
(`bound`, `static-best`, `oracle`), same fleet, same warm start, same seed."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies import Policy, registry
from policies.engine import with_engine
from policies.errors import UserError
from simulations.oracle import OracleParams, OraclePolicy, OracleSearch, initial_replicas
from simulations.profile import PerformanceProfile
from simulations.references import (
    BOUND,
    NAMES,
    ORACLE,
    STATIC_BEST,
    References,
    find_references,
    search_static,
)
from simulations.request import Request
from simulations.runner import Checkpoints, SimConfig, SimResult, simulate
from simulations.traffic import TraceChunk
from simulations.work import TraceWork

REJECTED_WARNING_SHARE = 0.01


@dataclass
class Comparison:
    results: dict[str, SimResult]
    references: References
    initial_replicas: int
    trace_duration_s: float
    rejected_share: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def oracle(self) -> SimResult:
        return self.references.oracle

    @property
    def oracle_utilization(self) -> float | None:
        return self.references.oracle_utilization


class RequestWriter:
    """One CSV row per simulated request, written as each ends (memory stays flat)."""

    COLUMNS = ("policy", "rid", "arrival_s", "prompt_tokens", "output_tokens", "outcome", "queue_s",
               "ttft_s", "itl_s", "e2e_s")

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(self.COLUMNS)

    def for_policy(self, policy: str) -> Callable[[Request], None]:
        def write(req: Request) -> None:
            times = (req.queue_s, req.ttft_s, req.itl_s, req.e2e_s)
            self._csv.writerow([policy, req.rid, f"{req.arrival:.6f}", req.prompt, req.output, req.outcome,
                                *(f"{v:.6f}" if v is not None else "" for v in times)])

        return write

    def close(self) -> None:
        self._file.close()


def parse_sets(items: list[str], policies: list[str]) -> dict[str, dict[str, Any]]:
    """`--set hpa.target_average_value=8` -> {"hpa": {"target_average_value": 8}} (values as YAML)."""
    import yaml

    out: dict[str, dict[str, Any]] = {p: {} for p in policies}
    for item in items:
        key, eq, raw = item.partition("=")
        name, dot, param = key.partition(".")
        if not eq or not dot or not param:
            raise UserError(f"--set expects policy.param=value, got {item!r}")
        if name not in out:
            raise UserError(f"--set {item!r}: policy {name!r} is not among --policy")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out[name][param] = value
    return out


def hardware_defaults(name: str, params: dict[str, Any], profile: PerformanceProfile | None) -> dict[str, Any]:
    """The simulated profile is the fleet's hardware: policies that model it get it."""
    return with_engine(name, params, profile.engine() if profile is not None else None)


def build_policies(names: list[str], sets: dict[str, dict[str, Any]], max_replicas: int,
                   profile: PerformanceProfile | None = None) -> dict[str, Callable[[], Policy]]:
    """Validate every policy's parameters up front (fail before any run), return factories."""
    factories: dict[str, Callable[[], Policy]] = {}
    for name in names:
        if name in NAMES:
            continue
        params = hardware_defaults(name, {"max_replicas": max_replicas, **sets.get(name, {})}, profile)
        if name == "static":
            params.setdefault("replicas", None)
        registry.params(name, **{k: v for k, v in params.items() if v is not None})
        factories[name] = (lambda n=name, p=params: registry.create(n, **{k: v for k, v in p.items() if v is not None}))
    return factories


class Workbench:
    """One traffic stream on one simulated fleet setup: its work, its warm start, and runs.

    Every run on a workbench shares the traffic, the profile, the cold start, the
    ceiling and the warm start, so its results compare like for like.
    """

    def __init__(self, traffic: Callable[[], Iterator[TraceChunk]], cfg: SimConfig, ceiling: int,
                 auto_initial: bool = True,
                 progress: Callable[[str, float], Callable[[float], None]] | None = None) -> None:
        self.traffic = traffic
        self.work = TraceWork(traffic(), cfg.profile, prefix_caching=cfg.prefix_caching)
        self.lead_s = cfg.cold_start.upper()
        self.ceiling = ceiling
        self.auto_initial = auto_initial
        if auto_initial:
            cfg = cfg.model_copy(update={"initial_replicas": min(ceiling, initial_replicas(self.work, self.lead_s))})
        self.cfg = cfg
        self.progress = progress
        self.on_request: Callable[[str], Callable | None] = lambda label: None
        self.runs = 0

    def run(self, policy: Policy, label: str, record: bool = True, initial: int | None = None,
            checkpoints: Checkpoints | None = None) -> SimResult:
        """`initial`: this run's own warm fleet (the reference points': a constant fleet has
        always been at its size, a clairvoyant schedule at its first need)."""
        bar = self.progress(label, self.work.duration_s) if self.progress else None
        on_request = self.on_request(label) if record else None
        cfg = self.cfg if initial is None else self.cfg.model_copy(update={"initial_replicas": initial})
        result = simulate(self.traffic(), policy, cfg, progress=bar, policy_name=label,
                          on_request=on_request, checkpoints=checkpoints)
        if bar is not None and hasattr(bar, "close"):
            bar.close()
        self.runs += 1
        return result

    def create(self, name: str, params: dict[str, Any] | None = None) -> Policy:
        """A registered policy under this workbench's ceiling."""
        params = hardware_defaults(name, {"max_replicas": self.ceiling, **(params or {})}, self.cfg.profile)
        return registry.create(name, **params)

    def references(self, slo_target: float, search: OracleSearch | None = None,
                   warm_start_from_static: bool = True) -> References:
        """The three reference points. `warm_start_from_static`: from now on every run starts
        with static-best's fleet (a deployment that was already serving well), so no policy
        pays for, or profits from, a warm start that differs from the constant fleet's."""
        refs = find_references(
            self.work, self.cfg,
            run_static=self._run_static,
            run_oracle=self._run_oracle,
            ceiling=self.ceiling, slo_target=slo_target, search=search,
        )
        if warm_start_from_static and self.auto_initial:
            self.cfg = self.cfg.model_copy(update={"initial_replicas": refs.static_best_replicas})
        return refs


    def warm_start_from_static_best(self, slo_target: float) -> int:
        """Only the static-best search (no oracle): every later run starts with its fleet, as
        after `references`. Returns that fleet's size."""
        _, replicas = search_static(self._run_static, self.work, self.ceiling, slo_target)
        if self.auto_initial:
            self.cfg = self.cfg.model_copy(update={"initial_replicas": replicas})
        return replicas

    def _run_static(self, replicas: int) -> SimResult:
        return self.run(self.create("static", {"replicas": replicas}), STATIC_BEST, False, replicas)

    def _run_oracle(self, utilization: float) -> SimResult:
        oracle = OraclePolicy(self.work, self.lead_s, utilization, OracleParams(max_replicas=self.ceiling))
        first = oracle.need[: int((self.cfg.warmup_s + self.lead_s) // self.work.bucket_s) + 2]
        return self.run(oracle, ORACLE, False, min(self.ceiling, int(first.max(initial=0))))


def compare(
    traffic: Callable[[], Iterator[TraceChunk]],
    policies: list[str],
    cfg: SimConfig,
    sets: dict[str, dict[str, Any]] | None = None,
    max_replicas: int = 100,
    slo_target: float = 0.99,
    progress: Callable[[str, float], Callable[[float], None]] | None = None,
    auto_initial: bool = True,
    requests_out: Path | None = None,
    warn: Callable[[str], None] | None = None,
    oracle_search: OracleSearch | None = None,
) -> Comparison:
    """`requests_out`: also write one CSV row per request of every compared policy (streamed).
    `warn`: called with a one-line message when over 1 % of the trace cannot be served."""
    sets = sets or {}
    factories = build_policies(policies, sets, max_replicas, cfg.profile)
    bench = Workbench(traffic, cfg, max_replicas, auto_initial, progress)
    if warn is not None and bench.work.rejected_share() > REJECTED_WARNING_SHARE:
        warn(rejected_warning(bench.work, cfg))
    writer = RequestWriter(requests_out) if requests_out is not None else None
    if writer is not None:
        bench.on_request = writer.for_policy
    refs = bench.references(slo_target, oracle_search)
    if warn is not None and not refs.static_best.meets(slo_target):
        warn(f"warning: no fleet up to --max-replicas {max_replicas} meets the SLO target {slo_target:.2%} "
             f"(static-best reached {refs.static_best.served_slo_attainment:.2%} of servable requests): "
             f"every ratio is against a reference that misses it; raise --max-replicas or lower --slo-target")
    results: dict[str, SimResult] = {}
    for name in policies:
        if name in NAMES:
            results[name] = refs.rows()[name]
            continue
        policy = factories[name]()
        initial = None
        if name == "static" and "replicas" not in sets.get(name, {}):
            # Static without a count: the smallest constant fleet that meets the target.
            policy = bench.create("static", {"replicas": refs.static_best_replicas})
            initial = refs.static_best_replicas
        results[name] = bench.run(policy, name, initial=initial)
        refs.annotate(results[name])
    if writer is not None:
        writer.close()
    return Comparison(results, refs, bench.cfg.initial_replicas, bench.work.duration_s,
                      bench.work.rejected_share())


def rejected_warning(work: TraceWork, cfg: SimConfig) -> str:
    t, p = work.totals, cfg.profile
    return (f"warning: {t.rejected:,} of {t.requests:,} requests ({work.rejected_share():.1%}) have prompts "
            f"longer than {p.name}'s max_model_len {p.max_model_len:,} (or its KV cache): they are rejected, "
            f"counted as SLO misses, and excluded from bound and oracle; pick a longer-context profile")


__all__ = ["BOUND", "NAMES", "ORACLE", "STATIC_BEST", "Comparison", "Workbench", "compare", "parse_sets"]
