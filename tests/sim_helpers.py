"""Small fixtures for driving the replica model directly."""

from __future__ import annotations

from simulations.engine import EventLoop
from simulations.profile import PerformanceProfile, load_profile
from simulations.replica import ReplicaHooks, ReplicaModel
from simulations.request import Request


class Recorder(ReplicaHooks):
    def __init__(self) -> None:
        self.finished_reqs: list[Request] = []
        self.rejected_reqs: list[Request] = []
        self.first_tokens: list[Request] = []

    def first_token(self, req: Request) -> None:
        self.first_tokens.append(req)

    def finished(self, req: Request) -> None:
        self.finished_reqs.append(req)

    def rejected(self, req: Request, why: str) -> None:
        self.rejected_reqs.append(req)


def tiny_profile(**overrides) -> PerformanceProfile:
    base = load_profile("llama3-8b-h100").model_dump()
    base.update(overrides)
    return PerformanceProfile(**base)


def one_replica(profile: PerformanceProfile | None = None, **kw):
    loop = EventLoop()
    rec = Recorder()
    rep = ReplicaModel("r", profile or load_profile("llama3-8b-h100"), loop, rec, **kw)
    return loop, rep, rec
