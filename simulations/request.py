"""One inference request as the replica model tracks it, and its outcome.

The outcome (queue time, TTFT, inter-token latency, end-to-end latency and how it ended)
is defined here once, for the run's results, the per-request CSV and the emulator's
/metrics histograms alike.
"""

from __future__ import annotations

COMPLETED, DROPPED, REJECTED = "completed", "dropped", "rejected"


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
        "queued",
        "first_token",
        "scheduled",
        "finished",
        "join_step",
        "join_generated",
        "epoch",
        "dropped",
        "rejected",
        "replica",
        "cached_tokens",
        "blocks",
        "blocks_seen",
    )

    def __init__(
        self, rid: int, arrival: float, prompt: int, output: int, hashes: tuple[int, ...] | None = None
    ) -> None:
        self.rid = rid
        self.arrival = arrival  # when the api server received it (vLLM's arrival_time)
        self.prompt = prompt if prompt > 1 else 1
        self.output = output if output > 1 else 1
        self.hashes = hashes
        self.prefill_left = self.prompt  # tokens still to compute before (re)entering decode
        self.computed = 0  # tokens whose KV is in the cache
        self.generated = 0
        self.queued: float | None = None  # when it reached the scheduler (vLLM's QUEUED event)
        self.first_token: float | None = None
        self.scheduled: float | None = None  # first time the scheduler picked it
        self.finished: float | None = None
        self.join_step = 0  # replica step count when it entered decode
        self.join_generated = 0  # tokens generated at that point
        self.epoch = 0  # bumped on preemption: stale heap entries are skipped
        self.dropped = False  # its client gave up (timeout or abort)
        self.rejected = False  # the replica refused it
        self.replica: object | None = None
        self.cached_tokens = 0  # prefix-cache hit tokens at its first admission
        self.blocks: list | None = None  # prefix blocks it holds in the replica's KV cache
        self.blocks_seen = 0  # leading prefix blocks already offered to the cache

    # --- outcome --------------------------------------------------------------------------

    @property
    def queue_s(self) -> float | None:
        """Time in the scheduler's queue before it was first scheduled (vLLM's queued_time:
        v1/metrics/stats.py, scheduled_ts - queued_ts; preemptions are not counted)."""
        if self.scheduled is None:
            return None
        return self.scheduled - (self.arrival if self.queued is None else self.queued)

    @property
    def ttft_s(self) -> float | None:
        """Time to first token, from its arrival at the api server."""
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def itl_s(self) -> float | None:
        """Mean inter-token latency over its decode (None with a single output token)."""
        if self.finished is None or self.first_token is None or self.output < 2:
            return None
        return (self.finished - self.first_token) / (self.output - 1)

    @property
    def e2e_s(self) -> float | None:
        """End-to-end latency of a completed request."""
        return None if self.finished is None else self.finished - self.arrival

    @property
    def outcome(self) -> str | None:
        """How it ended: completed, dropped or rejected (None while in flight)."""
        if self.finished is not None:
            return COMPLETED
        if self.dropped:
            return DROPPED
        if self.rejected:
            return REJECTED
        return None
