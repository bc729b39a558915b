"""The session queue's bound (``broker.session_queue``): count and payload bytes, oldest dropped first."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from amqtt.broker import RetainedApplicationMessage
from hypothesis import given
from hypothesis import strategies as st

from broker.limits import BrokerLimits
from broker.session_queue import ByteCountingQueue, make_room, queue_of


def _msg(i: int, size: int) -> RetainedApplicationMessage:
    return RetainedApplicationMessage(None, f"t/{i}", bytes(size), 1)


def _session(*sizes: int) -> SimpleNamespace:
    q: asyncio.Queue[RetainedApplicationMessage] = asyncio.Queue()
    for i, size in enumerate(sizes):
        q.put_nowait(_msg(i, size))
    return SimpleNamespace(retained_messages=q)


def _put(session: SimpleNamespace, i: int, size: int, limits: BrokerLimits) -> int:
    room = make_room(session, size, limits)
    if room.fits:
        session.retained_messages.put_nowait(_msg(i, size))
    return room.dropped + (0 if room.fits else 1)


def test_plain_queue_becomes_counting_with_the_same_messages_in_order() -> None:
    session = _session(10, 20, 30)
    q = queue_of(session)
    assert isinstance(q, ByteCountingQueue) and session.retained_messages is q and q.bytes == 60
    assert [q.get_nowait().topic for _ in range(3)] == ["t/0", "t/1", "t/2"]
    assert q.bytes == 0
    assert queue_of(session) is q


def test_oldest_dropped_to_fit_the_bytes() -> None:
    limits = BrokerLimits(max_queued_messages=100, max_queued_bytes=100)
    session = _session(40, 40)
    assert _put(session, 2, 40, limits) == 1  # 40 + 40 + 40 > 100: the oldest goes
    q = session.retained_messages
    assert q.bytes == 80 and [m.topic for m in q._queue] == ["t/1", "t/2"]


def test_a_message_larger_than_the_bound_is_dropped_itself() -> None:
    limits = BrokerLimits(max_queued_messages=100, max_queued_bytes=100)
    session = _session(40)
    room = make_room(session, 101, limits)
    assert not room.fits and room.dropped == 0 and session.retained_messages.qsize() == 1


def test_zero_means_no_byte_bound() -> None:
    limits = BrokerLimits(max_queued_messages=3, max_queued_bytes=0)
    session = _session()
    assert [_put(session, i, 10**6, limits) for i in range(5)] == [0, 0, 0, 1, 1]
    assert session.retained_messages.qsize() == 3


@given(st.lists(st.integers(0, 50), max_size=200), st.integers(1, 8), st.integers(0, 120))
def test_bounds_hold_and_the_newest_are_kept(sizes: list[int], max_messages: int, max_bytes: int) -> None:
    limits = BrokerLimits(max_queued_messages=max_messages, max_queued_bytes=max_bytes)
    session = _session()
    dropped = sum(_put(session, i, size, limits) for i, size in enumerate(sizes))
    q = queue_of(session)
    kept = [int(m.topic[2:]) for m in q._queue]
    assert dropped + len(kept) == len(sizes)
    assert len(kept) <= max_messages
    assert q.bytes == sum(sizes[i] for i in kept)
    if max_bytes:
        assert q.bytes <= max_bytes
    assert kept == sorted(kept)
    if kept:
        assert kept[-1] == max(i for i, s in enumerate(sizes) if not max_bytes or s <= max_bytes)
