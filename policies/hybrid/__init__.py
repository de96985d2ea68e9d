"""qscale's hybrid policy (see `policies/hybrid/policy.py`)."""

from policies.hybrid.params import HybridParams, ScheduleWindow
from policies.hybrid.policy import HybridPolicy

__all__ = ["HybridParams", "HybridPolicy", "ScheduleWindow"]
