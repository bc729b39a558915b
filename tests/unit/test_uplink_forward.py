"""The uplink's forwarder against a scripted paho client: window, batched acks, watchdog.

No sockets: the test plays the connection, calling ``on_publish`` as PUBACKs would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.link import Uplink
from broker.config import BridgeConfig, CloudConfig
from broker.errors import LinkBroken


@dataclass
class Rec:
    seq: int
    topic: str = "telemetry/dev-1/t"
    payload: bytes = b"x"
    qos: int = 1
    retain: bool = False


class FakeStore:
    def __init__(self, n: int) -> None:
        self.rows = {i: Rec(i) for i in range(1, n + 1)}
        self.ack_calls: list[list[int]] = []

    async def read(self, after_seq: int, limit: int) -> list[Any]:
        return [self.rows[s] for s in sorted(self.rows) if s > after_seq][:limit]

    def ack(self, seqs: list[int]) -> None:
        self.ack_calls.append(list(seqs))
        for s in seqs:
            self.rows.pop(s, None)

    async def wait_for_data(self, after_seq: int, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False


@dataclass
class Info:
    mid: int
    rc: int = 0

    def is_published(self) -> bool:
        return False


@dataclass
class FakePaho:
    sent: list[tuple[int, str]] = field(default_factory=list)  # (mid, topic)
    next_mid: int = 0
    foreign: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.on_publish: Any = lambda c, u, mid, rc, p: self.foreign.append(mid)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, props: Any) -> Info:
        self.next_mid += 1
        self.sent.append((self.next_mid, topic))
        return Info(self.next_mid)

    def puback(self, mid: int) -> None:
        self.on_publish(self, None, mid, 0, None)


class FakeClient:
    def __init__(self) -> None:
        self._client = FakePaho()


def make(store: FakeStore, inflight: int) -> Uplink:
    return Uplink(
        cloud=CloudConfig(embedded=False, host="127.0.0.1", port=1),
        bridge=BridgeConfig(inflight=inflight),
        site="plant-1",
        broker_id="a1",
        store=store,
        inject=lambda *a: asyncio.sleep(0),
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_window_bounds_unacked_and_acks_are_batched_out_of_order() -> None:
    async def main() -> None:
        store = FakeStore(10)
        up = make(store, inflight=4)
        client = FakeClient()
        paho = client._client
        task = asyncio.create_task(up._forward(client))  # type: ignore[arg-type]
        await settle()
        assert [m for m, _ in paho.sent] == [1, 2, 3, 4]  # the window is full
        assert up.statistics().inflight == 4 and store.ack_calls == []
        paho.puback(3)
        paho.puback(1)  # out of order, same loop turn
        paho.puback(999)  # not ours: goes on to aiomqtt's handler
        assert store.ack_calls == []  # nothing deleted before the flush, and only what was acked
        await settle()
        assert store.ack_calls == [[3, 1]]  # one store hand-off for the turn
        assert paho.foreign == [999]
        assert len(paho.sent) == 6  # two slots freed, two more sent
        assert up.statistics().forwarded == 2
        for mid in (2, 4, 5, 6):
            paho.puback(mid)
        await settle()
        for mid in (7, 8, 9, 10):
            paho.puback(mid)
        await settle()
        assert sorted(s for call in store.ack_calls for s in call) == list(range(1, 11))
        assert store.rows == {}
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert up.statistics().inflight == 0

    asyncio.run(asyncio.wait_for(main(), 10))


def test_watchdog_breaks_the_link_when_the_oldest_puback_is_late() -> None:
    async def main() -> None:
        store = FakeStore(3)
        up = make(store, inflight=10)
        up.puback_timeout_s = 0.2
        client = FakeClient()
        fwd = asyncio.create_task(up._forward(client))  # type: ignore[arg-type]
        await settle()
        client._client.puback(2)  # a later one answered; the oldest (seq 1) never is
        with pytest.raises(LinkBroken, match="no PUBACK"):
            await asyncio.wait_for(up._watchdog(), 5)
        fwd.cancel()
        await asyncio.gather(fwd, return_exceptions=True)
        assert 1 in store.rows  # never deleted: it is re-sent after the reconnect

    asyncio.run(asyncio.wait_for(main(), 10))


def test_reconnect_restarts_from_the_oldest_unacked_row() -> None:
    async def main() -> None:
        store = FakeStore(5)
        up = make(store, inflight=10)
        first = FakeClient()
        fwd = asyncio.create_task(up._forward(first))  # type: ignore[arg-type]
        await settle()
        first._client.puback(2)
        await settle()
        fwd.cancel()  # the connection broke
        await asyncio.gather(fwd, return_exceptions=True)
        second = FakeClient()
        fwd = asyncio.create_task(up._forward(second))  # type: ignore[arg-type]
        await settle()
        assert [t for _, t in second._client.sent] == ["telemetry/dev-1/t"] * 4  # seqs 1, 3, 4, 5 again
        assert up.statistics().resent == 4
        fwd.cancel()
        await asyncio.gather(fwd, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_refused_publish_breaks_the_link() -> None:
    async def main() -> None:
        store = FakeStore(1)
        up = make(store, inflight=10)
        client = FakeClient()
        client._client.publish = lambda *a: Info(mid=1, rc=4)  # type: ignore[method-assign]  # NO_CONN
        with pytest.raises(LinkBroken):
            await up._forward(client)  # type: ignore[arg-type]

    asyncio.run(asyncio.wait_for(main(), 10))


def test_an_mqtt5_refusal_is_counted_not_retried_forever() -> None:
    """A PUBACK with a failure reason code (MQTT 5) releases the row and is counted."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    async def main() -> None:
        store = FakeStore(2)
        up = make(store, inflight=10)
        client = FakeClient()
        paho = client._client
        fwd = asyncio.create_task(up._forward(client))  # type: ignore[arg-type]
        await settle()
        paho.on_publish(paho, None, 1, ReasonCode(PacketTypes.PUBACK, "Not authorized"), None)
        paho.on_publish(paho, None, 2, ReasonCode(PacketTypes.PUBACK, "Success"), None)
        await settle()
        assert store.rows == {}  # no head-of-line block behind the refused message
        stats = up.statistics()
        assert stats.refused_upstream == 1 and stats.forwarded == 2
        fwd.cancel()
        await asyncio.gather(fwd, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 10))
