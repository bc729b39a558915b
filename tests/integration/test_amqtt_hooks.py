"""Our amqtt hooks, shown against stock amqtt on a real socket (docs/amqtt-notes.md).

Stock amqtt 0.12.1 sends the QoS 1 PUBACK in ``ProtocolHandler._handle_qos1_message_flow``
before any plugin sees the message. ``EdgeBroker`` hands the message to the uplink tap
first, so the PUBACK waits for the tap (the buffer commit).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from amqtt.broker import Broker

from broker.server import EdgeBroker, amqtt_config
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.timeout(60)]

_ids = itertools.count()


class GateTap:
    """A tap that holds every offer until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.offered: list[tuple[str, bytes, int]] = []

    def wants(self, topic: str) -> bool:
        return topic.startswith("telemetry/")

    async def offer(self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str) -> None:
        self.offered.append((topic, payload, qos))
        await self.gate.wait()


def _publish_and_wait_ack(port: int, topic: str, timeout: float) -> bool:
    """Publish QoS 1 from a paho client thread; True if the PUBACK arrived within timeout."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hook-test-{next(_ids)}")
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        info = client.publish(topic, b"x", qos=1)
        info.wait_for_publish(timeout=timeout)
        return info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def _run(broker_factory: Any, tap: GateTap | None) -> tuple[bool, bool]:
    port = free_port()
    broker = broker_factory(port)
    await broker.start()
    try:
        acked_while_held = await asyncio.to_thread(_publish_and_wait_ack, port, "telemetry/p/d/t", 1.5)
        if tap is not None:
            tap.gate.set()
        acked_after = await asyncio.to_thread(_publish_and_wait_ack, port, "telemetry/p/d/t", 10)
        return acked_while_held, acked_after
    finally:
        await broker.shutdown()


def test_stock_amqtt_acks_before_anyone_sees_the_message() -> None:
    held, after = asyncio.run(_run(lambda port: Broker(amqtt_config("127.0.0.1", port)), None))
    assert held, "stock amqtt should PUBACK at once (if this fails, amqtt changed: revisit docs/amqtt-notes.md)"
    assert after


def test_edge_broker_acks_only_after_the_tap_returns() -> None:
    tap = GateTap()
    held, after = asyncio.run(_run(lambda port: EdgeBroker(amqtt_config("127.0.0.1", port), tap=tap), tap))
    assert not held, "PUBACK was sent before the tap (buffer commit) returned"
    assert after
    assert tap.offered[0] == ("telemetry/p/d/t", b"x", 1)


def test_tap_sees_offers_in_client_order() -> None:
    async def main() -> list[bytes]:
        port = free_port()
        seen: list[bytes] = []

        class Recorder:
            def wants(self, topic: str) -> bool:
                return True

            async def offer(self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str) -> None:
                seen.append(payload)
                await asyncio.sleep(0.001 * (len(seen) % 3))  # uneven latency must not reorder

        broker = EdgeBroker(amqtt_config("127.0.0.1", port), tap=Recorder())
        await broker.start()
        done = threading.Event()

        def pub() -> None:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="order")
            c.max_inflight_messages_set(50)
            c.connect("127.0.0.1", port)
            c.loop_start()
            infos = [c.publish("telemetry/p/d/t", str(i).encode(), qos=1) for i in range(300)]
            for info in infos:
                info.wait_for_publish(10)
            c.disconnect()
            c.loop_stop()
            done.set()

        await asyncio.to_thread(pub)
        await broker.shutdown()
        return seen

    seen = asyncio.run(main())
    assert seen == [str(i).encode() for i in range(300)]


def test_messages_out_are_counted_once_each_by_qos() -> None:
    """Every delivery is counted once, with the QoS it was sent with, also when it waited behind the window."""

    async def main() -> tuple[int, list[int], int]:
        port = free_port()
        broker = EdgeBroker(amqtt_config("127.0.0.1", port))
        await broker.start()
        got: list[int] = []
        done = threading.Event()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"count-sub-{next(_ids)}")
        subscribed = threading.Event()
        sub.on_connect = lambda c, *a: c.subscribe([("count/q0", 0), ("count/q1", 1)])
        sub.on_subscribe = lambda *a: subscribed.set()

        def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
            got.append(msg.qos)
            if len(got) == 300:
                done.set()

        sub.on_message = on_message
        try:
            await asyncio.to_thread(sub.connect, "127.0.0.1", port, 30)
            sub.loop_start()
            assert await asyncio.to_thread(subscribed.wait, 10)
            before = broker.counters.messages_out
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"count-pub-{next(_ids)}")
            await asyncio.to_thread(pub.connect, "127.0.0.1", port, 30)
            pub.loop_start()
            for i in range(100):  # 200 QoS 1 in a burst: more than the in-flight window of 20
                pub.publish("count/q1", str(i).encode(), qos=1)
                pub.publish("count/q1", str(i).encode(), qos=1)
                pub.publish("count/q0", str(i).encode(), qos=0)
            assert await asyncio.to_thread(done.wait, 20), len(got)
            pub.loop_stop()
            pub.disconnect()
            return broker.counters.messages_out - before, list(broker.counters.messages_out_by_qos), len(got)
        finally:
            sub.loop_stop()
            sub.disconnect()
            await broker.shutdown()

    out, by_qos, received = asyncio.run(main())
    assert received == 300
    assert out == 300, (out, by_qos)
    assert by_qos[0] == 100 and by_qos[1] == 200, by_qos
