"""Back-off bounds: grows, caps, jitters within bounds, resets."""

from __future__ import annotations

import random

import pytest

from bridge.backoff import Backoff


def test_grows_and_caps() -> None:
    b = Backoff(0.5, 8.0, random.Random(1))
    delays = [b.next_delay() for _ in range(20)]
    ceilings = [min(8.0, 0.5 * 2**i) for i in range(20)]
    for d, c in zip(delays, ceilings, strict=True):
        assert 0.1 * c <= d <= c
    assert max(delays) <= 8.0


def test_reset() -> None:
    b = Backoff(1.0, 60.0, random.Random(2))
    for _ in range(10):
        b.next_delay()
    b.reset()
    assert b.next_delay() <= 1.0


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)
