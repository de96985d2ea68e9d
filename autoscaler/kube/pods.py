"""The backend's Pods, from the Service's endpoints and the Deployment's status.replicas.

* An endpoint maps to a pod: `terminating` -> DRAINING, `ready` -> READY, else STARTING,
  except that a pod once ready stays READY when it fails its readiness probe (its data is
  missing, it did not start again). Its metrics URL is set while it serves (READY, or
  DRAINING and still serving).
* Pods without an IP are in no slice. status.replicas says how many pods exist, so the
  difference is reported as STARTING placeholders (`pending-0`, ...): capacity already
  ordered counts as in flight. A placeholder's time is when that pending pod appeared.
  When the count drops, the oldest placeholders go (pods get their IPs in about the order
  they were created) and hand their times to the pods that just appeared in a slice, so a
  pod's `started_at` is close to its creation, not to its scheduling.
* `started_at` and `ready_at` are the first times seen; both are forgotten with the pod.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoscaler.backends.base import Pod
from autoscaler.kube.endpointslices import Endpoint
from policies import ReplicaState


def _state(e: Endpoint) -> ReplicaState:
    if e.terminating:
        return ReplicaState.DRAINING
    return ReplicaState.READY if e.ready else ReplicaState.STARTING


class PodTracker:
    def __init__(self, metrics_port: int, metrics_path: str = "/metrics") -> None:
        self.metrics_port = metrics_port
        self.metrics_path = metrics_path
        self._started: dict[str, float] = {}
        self._ready: dict[str, float] = {}
        self._pending: list[float] = []  # when each pending pod appeared, oldest first

    def pods(self, endpoints: Sequence[Endpoint], status_replicas: int, now: float) -> list[Pod]:
        live = sum(1 for e in endpoints if not e.terminating)
        handed = self._update_pending(max(0, status_replicas - live), now)
        pods = [self._pod(e, handed, now) for e in endpoints]
        names = {e.name for e in endpoints}
        for seen in (self._started, self._ready):
            for name in [n for n in seen if n not in names]:
                del seen[name]
        pods.extend(Pod(f"pending-{i}", ReplicaState.STARTING, t, None) for i, t in enumerate(self._pending))
        return pods

    def _update_pending(self, count: int, now: float) -> list[float]:
        """Keep `count` placeholders; the times of those that went, oldest first."""
        gone = self._pending[: max(0, len(self._pending) - count)]
        del self._pending[: len(gone)]
        self._pending.extend([now] * (count - len(self._pending)))
        return gone

    def _pod(self, e: Endpoint, handed: list[float], now: float) -> Pod:
        if e.name not in self._started:
            self._started[e.name] = handed.pop(0) if handed and not e.terminating else now
        state = _state(e)
        if state is ReplicaState.STARTING and e.name in self._ready:
            # It was ready: failing its readiness probe now (an overloaded server often does) is
            # missing data about a replica that exists, not a new start. It stays READY and is
            # scraped if it answers; if not, it reads as missing and the control step holds.
            state = ReplicaState.READY
        if state is ReplicaState.READY:
            self._ready.setdefault(e.name, now)
        serving = state is ReplicaState.READY or (state is ReplicaState.DRAINING and e.serving)
        host = f"[{e.ip}]" if e.ip and ":" in e.ip else e.ip  # IPv6
        url = f"http://{host}:{self.metrics_port}{self.metrics_path}" if e.ip and serving else None
        return Pod(e.name, state, self._started[e.name], url, self._ready.get(e.name))
