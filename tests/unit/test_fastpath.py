"""broker.fastpath: PUBACKs leave in PUBLISH order, after what they wait for, one write per loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

from broker.fastpath import AckQueue, Outbox
from broker.wire import encode_puback


class Wire:
    """What the outbox writes, one entry per transport write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def acks(self) -> list[int]:
        data = b"".join(self.writes)
        return [int.from_bytes(data[i + 2 : i + 4], "big") for i in range(0, len(data), 4)]


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _run(body: Any) -> Any:
    return asyncio.run(body())


def test_pubacks_wait_for_their_commit_and_keep_publish_order() -> None:
    async def body() -> tuple[Wire, list[BaseException]]:
        wire, errors = Wire(), []
        loop = asyncio.get_running_loop()
        acks = AckQueue(Outbox(wire.writes.append, lambda: wire.closing), errors.append)
        first, second = loop.create_future(), loop.create_future()
        acks.add(1, first)
        acks.add(2, None)  # nothing to wait for, but after 1
        acks.add(3, second)
        await _turns()
        assert wire.writes == []  # 1's commit is not done: nothing may go
        second.set_result(7)  # a later commit finishing first releases nothing
        await _turns()
        assert wire.writes == []
        first.set_result(6)
        await _turns()
        return wire, errors

    wire, errors = _run(body)
    assert wire.acks() == [1, 2, 3]
    assert errors == []


def test_one_group_commit_releases_its_pubacks_in_one_write() -> None:
    async def body() -> Wire:
        wire = Wire()
        loop = asyncio.get_running_loop()
        acks = AckQueue(Outbox(wire.writes.append, lambda: wire.closing), lambda exc: None)
        futures = [loop.create_future() for _ in range(50)]
        for pid, fut in enumerate(futures, start=1):
            acks.add(pid, fut)
        for fut in futures:  # as the store settles one commit: all in one callback
            fut.set_result(None)
        await _turns()
        return wire

    wire = _run(body)
    assert len(wire.writes) == 1
    assert wire.acks() == list(range(1, 51))


def test_a_refused_message_stops_its_puback_and_all_later_ones() -> None:
    async def body() -> tuple[Wire, list[BaseException]]:
        wire, errors = Wire(), []
        loop = asyncio.get_running_loop()
        acks = AckQueue(Outbox(wire.writes.append, lambda: wire.closing), errors.append)
        ok, refused, later = loop.create_future(), loop.create_future(), loop.create_future()
        acks.add(1, ok)
        acks.add(2, refused)
        acks.add(3, later)
        ok.set_result(None)
        refused.set_exception(RuntimeError("store full"))
        later.set_result(None)
        await _turns()
        acks.add(4, None)  # the connection is being closed: nothing more is acknowledged
        await _turns()
        return wire, errors

    wire, errors = _run(body)
    assert wire.acks() == [1]
    assert [str(e) for e in errors] == ["store full"]


def test_outbox_coalesces_a_turn_and_writes_nothing_once_closing() -> None:
    async def body() -> Wire:
        wire = Wire()
        out = Outbox(wire.writes.append, lambda: wire.closing)
        out.send(encode_puback(1))
        out.send(encode_puback(2))
        await _turns()
        out.send(encode_puback(3))
        out.flush()  # an amqtt write is coming: what is queued goes first
        wire.closing = True
        out.send(encode_puback(4))
        await _turns()
        return wire

    wire = _run(body)
    assert wire.writes == [encode_puback(1) + encode_puback(2), encode_puback(3)]
