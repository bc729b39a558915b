"""Capped, jittered exponential back-off for link reconnects.

How it works: attempt n waits a uniformly random time in [0, min(cap, base·2ⁿ)]
("full jitter"), never less than ``floor`` so a flapping peer is not hammered.
``reset()`` after a connection has stayed up.

What it does not do: no sleeping and no clock. The caller passes a random source
(``random.Random``) and does the waiting, so tests are exact and fast.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delay generator: ``next_delay()`` per failed attempt, ``reset()`` on success."""

    base_s: float
    cap_s: float
    rng: random.Random = field(default_factory=random.Random)
    floor_fraction: float = 0.1
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError("need 0 < base_s <= cap_s")

    def next_delay(self) -> float:
        """Delay before the next attempt; grows exponentially up to the cap, jittered."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        floor = ceiling * self.floor_fraction
        return float(floor + self.rng.random() * (ceiling - floor))

    def reset(self) -> None:
        """Forget past failures (call once a connection has proven healthy)."""
        self.attempt = 0
