"""Incoming QoS 2 on both of the broker's read paths: the fast path, and amqtt's (a plugin listens for messages).

Each: the uplink tap is offered a message once even when the client resends it before
PUBREL (the PUBREC waits for the tap), at most ``max_awaiting_rel`` identifiers are held
(one more is answered PUBREC and dropped, counted in ``dropped_in``), and every PUBREL gets
a PUBCOMP (docs/amqtt-notes.md, entries 80-81). Spoken in raw MQTT to an in-process
``EdgeBroker``.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from amqtt.plugins.base import BasePlugin

from broker.limits import BrokerLimits
from broker.server import EdgeBroker, amqtt_config
from tests.integration.conftest import free_port
from tests.protocol import packets as P

pytestmark = [pytest.mark.timeout(60)]

LIMIT = 3
SEEN: list[bytes] = []  # payloads the listening plugin was told of


class MessageListener(BasePlugin[Any]):
    """An amqtt plugin listening for received messages: the broker reads PUBLISHes amqtt's way."""

    @dataclass
    class Config:
        pass

    async def on_broker_message_received(self, *, client_id: str, message: Any) -> None:
        SEEN.append(bytes(message.data))


class Recorder:
    def __init__(self) -> None:
        self.offered: list[bytes] = []

    def wants(self, topic: str) -> bool:
        return True

    async def offer(self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str) -> None:
        self.offered.append(payload)


def _pid(p: P.Packet) -> int:
    return int(struct.unpack("!H", p.body[:2])[0])


def _pubrel(pid: int) -> bytes:
    return P.raw((P.PUBREL << 4) | 2, struct.pack("!H", pid))


def _conversation(port: int) -> list[int]:
    """Resend one message before PUBREL, go over the limit, release everything; the PUBCOMPs' ids."""
    w = P.Wire(port)
    assert w.connect("q2-paths")[0] == 0
    w.send(P.publish("telemetry/p/d/t", b"m1", qos=2, pid=1))
    assert _pid(w.recv_type(P.PUBREC)) == 1
    w.send(P.publish("telemetry/p/d/t", b"m1", qos=2, pid=1, dup=True))
    assert _pid(w.recv_type(P.PUBREC)) == 1
    for i in range(2, LIMIT + 3):  # LIMIT held (1..LIMIT), two more dropped
        w.send(P.publish("telemetry/p/d/t", b"m%d" % i, qos=2, pid=i))
        assert _pid(w.recv_type(P.PUBREC)) == i
    comps = []
    for i in [*range(1, LIMIT + 3), 999]:
        w.send(_pubrel(i))
        comps.append(_pid(w.recv_type(P.PUBCOMP)))
    w.send(P.disconnect())
    w.close()
    return comps


@pytest.mark.parametrize("path", ["fast", "amqtt"])
def test_incoming_qos2_once_bounded_and_completed(path: str) -> None:
    SEEN.clear()

    async def main() -> tuple[list[int], Recorder, EdgeBroker]:
        port = free_port()
        config = amqtt_config("127.0.0.1", port)
        if path == "amqtt":
            config["plugins"][f"{__name__}.MessageListener"] = {}
        tap = Recorder()
        broker = EdgeBroker(config, tap=tap, limits=BrokerLimits(max_awaiting_rel=LIMIT))
        await broker.start()
        try:
            comps = await asyncio.to_thread(_conversation, port)
            if path == "amqtt":
                for _ in range(200):  # amqtt's client loop hands messages to plugins in its own task
                    if len(SEEN) >= LIMIT:
                        break
                    await asyncio.sleep(0.05)
        finally:
            await broker.shutdown()
        return comps, tap, broker

    comps, tap, broker = asyncio.run(main())
    assert comps == [*range(1, LIMIT + 3), 999], "every PUBREL is answered with PUBCOMP"
    expected = [b"m%d" % i for i in range(1, LIMIT + 1)]
    assert tap.offered == expected, "the tap sees each held message once, and not the dropped ones"
    assert broker.counters.dropped_in == 2
    assert broker.counters.messages_in_by_qos[2] == LIMIT
    if path == "amqtt":
        assert expected == SEEN, "a listening plugin is told of each accepted message once"
