"""The uplink's forwarder against a scripted connection: window, batched acks, watchdog.

No sockets: the test plays the cloud. An :class:`~bridge.upstream.Upstream` gets a fake
transport that records what the uplink writes (parsed back with the codec), and the
test feeds it PUBACK bytes through ``data_received``, as the network would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge import wire
from bridge.link import Uplink
from bridge.upstream import Upstream
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
        self.noted: tuple[int, int] | None = None

    async def read(self, after_seq: int, limit: int) -> list[Any]:
        return [self.rows[s] for s in sorted(self.rows) if s > after_seq][:limit]

    def ack(self, seqs: list[int]) -> None:
        self.ack_calls.append(list(seqs))
        for s in seqs:
            self.rows.pop(s, None)

    async def wait_for_data(self, after_seq: int, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False

    def note_uplink(self, sent_high: int, resent: int) -> None:
        self.noted = (sent_high, resent)


@dataclass
class FakeTransport:
    """Collects writes; parses them back as the cloud would see them."""

    version: int = wire.MQTT311
    chunks: list[bytes] = field(default_factory=list)
    closing: bool = False

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def sent(self) -> list[tuple[int, str, bytes, dict[int, object]]]:
        """(packet id, topic, payload, properties) of every PUBLISH written so far."""
        out = []
        for pkt in _decode_client_publishes(b"".join(self.chunks), self.version):
            out.append(pkt)
        return out


def _decode_client_publishes(data: bytes, version: int) -> list[tuple[int, str, bytes, dict[int, object]]]:
    # The client-side PUBLISH has the same layout as the server's: the codec's parser reads it.
    parser = wire.Parser(version=version)
    return [(p.packet_id, p.topic, p.payload, p.properties) for p in parser.feed(data) if isinstance(p, wire.Publish)]


class Cloud:
    """An Upstream wired to a FakeTransport; ``puback`` plays the server."""

    def __init__(self, version: int = wire.MQTT311) -> None:
        self.conn = Upstream(version)
        self.transport = FakeTransport(version)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    def puback(self, pid: int, reason: int = 0) -> None:
        self.conn.data_received(wire.encode_puback(pid, version=self.conn.version, reason=reason))

    def pids(self) -> list[int]:
        return [pid for pid, *_ in self.transport.sent()]


def make(store: Any, inflight: int, protocol: str = "3.1.1") -> Uplink:
    return Uplink(
        cloud=CloudConfig(embedded=False, host="127.0.0.1", port=1, protocol=protocol),  # type: ignore[arg-type]
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
        cloud = Cloud()
        task = asyncio.create_task(up._forward(cloud.conn))
        await settle()
        assert cloud.pids() == [1, 2, 3, 4]  # the window is full
        assert len(cloud.transport.chunks) == 1  # one write for the whole batch
        assert up.statistics().inflight == 4 and store.ack_calls == []
        # Two PUBACKs and one for a packet id that is not ours, in one network read.
        cloud.conn.data_received(wire.encode_puback(3) + wire.encode_puback(1) + wire.encode_puback(999))
        assert store.ack_calls == []  # nothing deleted before the flush, and only what was acked
        await settle()
        assert store.ack_calls == [[3, 1]]  # one store hand-off for the turn
        assert len(cloud.pids()) == 6  # two slots freed, two more sent
        assert up.statistics().forwarded == 2
        for pid in (2, 4, 5, 6):
            cloud.puback(pid)
        await settle()
        for pid in cloud.pids()[6:]:
            cloud.puback(pid)
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
        cloud = Cloud()
        fwd = asyncio.create_task(up._forward(cloud.conn))
        await settle()
        cloud.puback(2)  # a later one answered; the oldest (seq 1) never is
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
        first = Cloud()
        fwd = asyncio.create_task(up._forward(first.conn))
        await settle()
        first.puback(2)
        await settle()
        fwd.cancel()  # the connection broke
        await asyncio.gather(fwd, return_exceptions=True)
        second = Cloud()
        fwd = asyncio.create_task(up._forward(second.conn))
        await settle()
        assert [t for _, t, _, _ in second.transport.sent()] == ["telemetry/dev-1/t"] * 4  # seqs 1, 3, 4, 5 again
        assert up.statistics().resent == 4
        assert store.noted == (5, 4)  # handed to the buffer to persist
        fwd.cancel()
        await asyncio.gather(fwd, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_refused_publish_breaks_the_link() -> None:
    async def main() -> None:
        store = FakeStore(1)
        up = make(store, inflight=10)
        cloud = Cloud()
        cloud.transport.closing = True  # the connection is gone
        with pytest.raises(LinkBroken):
            await up._forward(cloud.conn)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_an_mqtt5_refusal_is_counted_not_retried_forever() -> None:
    """A PUBACK with a failure reason code (MQTT 5) releases the row and is counted."""

    async def main() -> None:
        store = FakeStore(2)
        up = make(store, inflight=10, protocol="5")
        cloud = Cloud(wire.MQTT5)
        fwd = asyncio.create_task(up._forward(cloud.conn))
        await settle()
        sent = cloud.transport.sent()
        assert [p[3].get(wire.USER_PROPERTY) for p in sent] == [
            [("edgemq-id", "plant-1/a1/1")],
            [("edgemq-id", "plant-1/a1/2")],
        ]
        cloud.puback(1, reason=0x87)  # not authorized
        cloud.puback(2)
        await settle()
        assert store.rows == {}  # no head-of-line block behind the refused message
        stats = up.statistics()
        assert stats.refused_upstream == 1 and stats.forwarded == 2
        fwd.cancel()
        await asyncio.gather(fwd, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_resent_resumes_from_the_buffer_after_a_restart() -> None:
    """kill -9 and restart: the persisted counters make the re-sent tail visible."""

    class Persisted(FakeStore):
        def uplink_counters(self) -> tuple[int, int]:
            return (3, 7)  # seqs up to 3 were sent before the crash; 7 re-sends counted then

    async def main() -> None:
        store = Persisted(5)
        up = make(store, inflight=10)
        up._load_counters()
        cloud = Cloud()
        fwd = asyncio.create_task(up._forward(cloud.conn))
        await settle()
        assert len(cloud.pids()) == 5
        assert up.statistics().resent == 7 + 3  # seqs 1-3 went out before the crash
        fwd.cancel()
        await asyncio.gather(fwd, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_rate_limit_spreads_the_sends() -> None:
    async def main() -> None:
        store = FakeStore(30)
        up = make(store, inflight=100)
        up.bridge = BridgeConfig(inflight=100, rate_limit=200.0)  # 2 per 10 ms slot
        cloud = Cloud()
        fwd = asyncio.create_task(up._forward(cloud.conn))
        await settle()
        assert 0 < len(cloud.pids()) <= 2  # not the whole backlog at once
        fwd.cancel()
        await asyncio.gather(fwd, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 10))
