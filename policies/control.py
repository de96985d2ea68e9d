"""One control step, shared by the live loop and the simulator.

readings -> `SignalsBuilder` -> policy.decide -> `clamp`. Both sides call
`Controller.step`, so signals, decisions and clamps cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from policies.base import Policy
from policies.builder import ReplicaReading, SignalsBuilder
from policies.clamp import ClampResult, ScaleLimits, clamp
from policies.decision import Decision
from policies.signals import Signals


class OutageRules(BaseModel):
    """What the loop does when some replicas cannot be read (live and simulated alike).

    These guards live here and nowhere else: every policy gets them, none repeats them.
    Missing data reads low, so by default no policy may scale down on it; stale data
    (older than `stale_after_s`) holds the fleet; after
    `fallback_after_s` of continuous outage the fleet goes up to at least
    `fallback_replicas` (like KEDA's fallback, but never down: missing data reads low).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    hold_on_incomplete: bool = True
    fallback_after_s: float | None = Field(None, gt=0)
    fallback_replicas: int | None = Field(None, ge=0)
    stuck_starting_s: float | None = Field(
        900.0, gt=0, description="replicas starting longer than this stop further scale-up"
    )
    stale_after_s: float | None = Field(
        30.0, gt=0, description="readings older than this change nothing: the fleet holds"
    )


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    signals: Signals
    decision: Decision
    clamp: ClampResult
    guard: str | None = None  # what the outage rules did, if anything
    outage_s: float = 0.0

    @property
    def desired(self) -> int:
        return self.clamp.desired

    @property
    def remove_first(self) -> tuple[str, ...]:
        """Replicas to remove before healthy ones on a scale-down: those that could not be read."""
        return self.signals.missing


class Controller:
    def __init__(self, policy: Policy, limits: ScaleLimits, outage: OutageRules | None = None) -> None:
        self.policy = policy
        self.limits = limits
        self.outage = outage or OutageRules()
        self.builder = SignalsBuilder()
        self._outage_since: float | None = None

    def step(
        self,
        time: float,
        readings: list[ReplicaReading],
        current_replicas: int,
        data_age_s: float = 0.0,
        router_waiting: float = 0.0,
    ) -> ControlOutcome:
        signals = self.builder.build(
            time, readings, current_replicas, data_age_s=data_age_s, router_waiting=router_waiting
        )
        decision = self.policy.decide(signals)
        requested, guard, outage_s = self._guard(time, signals, decision.desired_replicas, current_replicas)
        result = clamp(requested, current_replicas, self.limits)
        return ControlOutcome(signals, decision, result, guard, outage_s)

    def _guard(self, time: float, signals: Signals, requested: int, current: int) -> tuple[int, str | None, float]:
        rules = self.outage
        if rules.stale_after_s is not None and signals.data_age_s > rules.stale_after_s and requested != current:
            # Stale data says nothing about now: neither way is safe.
            return current, f"hold: data is {signals.data_age_s:.0f}s old", 0.0
        if rules.stuck_starting_s is not None and requested > current:
            stuck = [r for r in signals.starting() if time - r.started_at > rules.stuck_starting_s]
            if stuck:
                # More orders would queue behind whatever keeps these from starting.
                return current, f"hold: {len(stuck)} replicas stuck starting, no scale-up", 0.0
        if signals.complete:
            self._outage_since = None
            return requested, None, 0.0
        if self._outage_since is None:
            self._outage_since = time
        outage_s = time - self._outage_since
        if (rules.fallback_after_s is not None and rules.fallback_replicas is not None
                and outage_s >= rules.fallback_after_s):
            # The fallback is a floor, never a cut: missing data reads low, and the replicas
            # that can be read still say what they need.
            target = max(current, requested, rules.fallback_replicas)
            return target, f"fallback: {outage_s:.0f}s of incomplete data, at least {rules.fallback_replicas}", outage_s
        if rules.hold_on_incomplete and requested < current:
            return current, f"hold: {len(signals.missing)} replicas unreadable, no scale-down", outage_s
        return requested, None, outage_s
