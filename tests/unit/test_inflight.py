"""The uplink's in-flight window: out-of-order PUBACKs, the bound, the watchdog's question."""

from __future__ import annotations

import pytest

from bridge.inflight import InflightWindow


def test_out_of_order_acks_free_slots_and_return_seqs() -> None:
    w = InflightWindow(3)
    for mid, seq in ((1, 10), (2, 11), (3, 12)):
        w.sent(mid, seq, now=float(seq))
    assert w.full and len(w) == 3
    assert w.acked(2) == 11  # the middle one first
    assert not w.full and len(w) == 2
    assert w.oldest_sent_at() == 10.0  # the oldest is still the first sent
    assert w.acked(1) == 10
    assert w.oldest_sent_at() == 12.0


def test_unknown_and_repeated_packet_ids_are_not_ours() -> None:
    w = InflightWindow(2)
    w.sent(7, 1, now=0.0)
    assert w.acked(8) is None
    assert w.acked(7) == 1
    assert w.acked(7) is None  # a duplicate PUBACK acks nothing twice
    assert len(w) == 0


def test_a_packet_id_cannot_be_in_flight_twice() -> None:
    w = InflightWindow(2)
    w.sent(1, 1, now=0.0)
    with pytest.raises(ValueError):
        w.sent(1, 2, now=0.0)


def test_overdue_looks_at_the_oldest_unacknowledged_only() -> None:
    w = InflightWindow(10)
    assert not w.overdue(now=1e9, timeout=30.0)  # empty: never overdue
    w.sent(1, 1, now=0.0)
    w.sent(2, 2, now=20.0)
    assert not w.overdue(now=30.0, timeout=30.0)
    assert w.overdue(now=30.5, timeout=30.0)
    w.acked(1)  # the old one answered: the newer one has waited only 10.5 s
    assert not w.overdue(now=30.5, timeout=30.0)
    assert w.overdue(now=50.5, timeout=30.0)
    w.clear()
    assert len(w) == 0 and not w.overdue(now=1e9, timeout=30.0)


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        InflightWindow(0)
