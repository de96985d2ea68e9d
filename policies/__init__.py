"""Scaling policies behind one interface: `Signals` in, `Decision` out.

Built-ins: `static`, `hpa`, `keda`, `kpa` (faithful ports of the baselines) and
`hybrid` (qscale's warm baseline + cold-start-aware burst policy). Third-party
policies register through the `qscale.policies` entry-point group.
"""

from policies.base import Policy, PolicyParams
from policies.builder import ReplicaReading, SignalsBuilder
from policies.clamp import ClampResult, ScaleLimits, clamp
from policies.decision import Decision
from policies.hpa import HpaPolicy
from policies.hybrid import HybridPolicy
from policies.keda import KedaPolicy
from policies.kpa import KpaPolicy
from policies.registry import PolicyConfigError, registry
from policies.signals import ReplicaSample, ReplicaState, Signals
from policies.static import StaticPolicy

for _cls in (StaticPolicy, HpaPolicy, KedaPolicy, KpaPolicy, HybridPolicy):
    registry.register(_cls)

__all__ = [
    "ClampResult",
    "Decision",
    "Policy",
    "PolicyConfigError",
    "PolicyParams",
    "ReplicaReading",
    "ReplicaSample",
    "ReplicaState",
    "ScaleLimits",
    "Signals",
    "SignalsBuilder",
    "clamp",
    "registry",
]
