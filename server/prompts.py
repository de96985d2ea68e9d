"""Prompt bodies for load: what the server's prefix cache sees must be what the trace says.

Repeating one word makes every prompt share one long prefix, so a real vLLM with prefix
caching would compute almost nothing while the simulator (which shares only the trace's
hash blocks) computes everything. `TokenPrompts` sends token ids instead: each request's
own tokens are drawn from a generator seeded by its id, and each trace hash block (Mooncake's
`hash_ids`, `block_tokens` each) is drawn from a generator seeded by the hash, so two requests
share exactly the leading blocks the trace says they share. Ids stay in [10, 500): valid for
any vocabulary of 500 tokens or more (the tiny test model has about 540).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

PromptStyle = Literal["tokens", "text"]
LOW_ID, HIGH_ID = 10, 500


class TokenPrompts:
    def __init__(self, seed: int = 0, block_tokens: int = 512) -> None:
        self.seed = seed
        self.block_tokens = block_tokens

    def build(self, rid: int, tokens: int, hashes: tuple[int, ...] | None = None) -> list[int]:
        tokens = max(1, tokens)
        out: list[int] = []
        for h in hashes or ():
            if len(out) >= tokens:
                break
            block = np.random.default_rng([self.seed, 1, h & 0xFFFFFFFFFFFF]).integers(
                LOW_ID, HIGH_ID, self.block_tokens)
            out.extend(block.tolist())
        rest = tokens - len(out)
        if rest > 0:
            own = np.random.default_rng([self.seed, 2, rid]).integers(LOW_ID, HIGH_ID, rest)
            out.extend(own.tolist())
        return out[:tokens]


class TextPrompts:
    """The word "hello" repeated: one shared prefix for every request (plain-text servers)."""

    def build(self, rid: int, tokens: int, hashes: tuple[int, ...] | None = None) -> str:
        return " ".join(["hello"] * max(1, tokens))


def prompt_builder(style: PromptStyle, seed: int = 0) -> TokenPrompts | TextPrompts:
    return TokenPrompts(seed) if style == "tokens" else TextPrompts()
