"""One inference request as the replica model tracks it."""

from __future__ import annotations


class Request:
    """A request in flight. Slots keep it small: the simulator holds only in-flight ones."""

    __slots__ = (
        "rid",
        "arrival",
        "prompt",
        "output",
        "hashes",
        "prefill_left",
        "computed",
        "generated",
        "first_token",
        "scheduled",
        "finished",
        "join_step",
        "join_generated",
        "epoch",
        "dropped",
        "replica",
        "cached_tokens",
    )

    def __init__(
        self, rid: int, arrival: float, prompt: int, output: int, hashes: tuple[int, ...] | None = None
    ) -> None:
        self.rid = rid
        self.arrival = arrival
        self.prompt = max(1, prompt)
        self.output = max(1, output)
        self.hashes = hashes
        self.prefill_left = self.prompt  # tokens still to compute before (re)entering decode
        self.computed = 0  # tokens whose KV is in the cache
        self.generated = 0
        self.first_token: float | None = None
        self.scheduled: float | None = None  # first time the scheduler picked it
        self.finished: float | None = None
        self.join_step = 0  # replica step count when it entered decode
        self.join_generated = 0  # tokens generated at that point
        self.epoch = 0  # bumped on preemption: stale heap entries are skipped
        self.dropped = False
        self.replica: object | None = None
        self.cached_tokens = 0  # prefix-cache hit tokens at admission

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival
