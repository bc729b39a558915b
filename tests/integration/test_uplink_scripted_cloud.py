"""The uplink against a cloud the test scripts packet by packet (asyncio server on 127.0.0.1).

Mosquitto-style bridge tests: the test plays the remote broker, so it can do what a real
one rarely does — refuse the CONNECT, send a malformed PUBACK, deliver a command and watch
when the PUBACK for it comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bridge import wire
from bridge.link import Uplink
from broker.config import BridgeConfig, CloudConfig

pytestmark = [pytest.mark.timeout(60)]


class Store:
    def __init__(self, n: int) -> None:
        self.rows = {i: i for i in range(1, n + 1)}
        self.acked: list[int] = []

    async def read(self, after_seq: int, limit: int) -> list[Any]:
        class Rec:
            def __init__(self, seq: int) -> None:
                self.seq, self.topic, self.payload, self.qos, self.retain = seq, "telemetry/plant-1/d/t", b"x", 1, False

        return [Rec(s) for s in sorted(self.rows) if s > after_seq][:limit]

    def ack(self, seqs: list[int]) -> None:
        self.acked += seqs
        for s in seqs:
            self.rows.pop(s, None)

    async def wait_for_data(self, after_seq: int, timeout: float) -> bool:
        await asyncio.sleep(min(timeout, 0.1))
        return False


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    n = mult = 0
    while True:
        b = (await reader.readexactly(1))[0]
        n |= (b & 0x7F) << mult
        mult += 7
        if not b & 0x80:
            break
    return first, await reader.readexactly(n)


async def run_against(script: Script, store: Any, until: Callable[[Uplink], bool], inject: Any = None) -> Uplink:
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    uplink = Uplink(
        cloud=CloudConfig(embedded=False, host="127.0.0.1", port=port),
        bridge=BridgeConfig(reconnect_min_s=0.1, reconnect_max_s=0.2, inflight=10),
        site="plant-1",
        broker_id="a1",
        store=store,
        inject=inject or (lambda *a: asyncio.sleep(0)),
    )
    task = asyncio.create_task(uplink.run())
    try:
        async with asyncio.timeout(30):
            while not until(uplink):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
        await server.wait_closed()
    return uplink


def test_a_refused_connect_is_reported_and_retried() -> None:
    attempts = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        first, _ = await read_packet(reader)
        assert first >> 4 == 1  # CONNECT
        attempts += 1
        writer.write(b"\x20\x02\x00\x05")  # not authorized
        await writer.drain()
        writer.close()

    up = asyncio.run(run_against(refuse, Store(1), lambda u: attempts >= 2))
    assert up.connects == 0 and up.forwarded == 0
    assert up.last_error is not None and "0x05" in up.last_error


def test_a_malformed_puback_breaks_the_link_and_nothing_is_acked() -> None:
    async def bad_puback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(b"\x20\x02\x00\x00")
        while True:
            first, body = await read_packet(reader)
            if first >> 4 == 3 and first & 0x06:  # a QoS 1 PUBLISH
                writer.write(b"\x40\x03" + body[2 + body[1] : 2 + body[1] + 2] + b"\x00")  # 3 bytes: 3.1.1 allows 2
                await writer.drain()

    store = Store(3)
    up = asyncio.run(run_against(bad_puback, store, lambda u: u.disconnects >= 1))
    assert store.acked == [] and up.last_error is not None and "PUBACK of 3 bytes" in up.last_error


def test_a_command_is_acknowledged_only_after_it_is_injected() -> None:
    order: list[str] = []

    async def inject(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        order.append(f"inject {topic}")
        await asyncio.sleep(0.2)  # a slow local broker: the PUBACK must wait for it
        order.append("injected")

    async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(b"\x20\x02\x00\x00")
        while True:
            first, body = await read_packet(reader)
            kind = first >> 4
            if kind == 3 and first & 0x06:  # state publish: acknowledge it
                tlen = (body[0] << 8) | body[1]
                writer.write(b"\x40\x02" + body[2 + tlen : 4 + tlen])
            elif kind == 8:  # SUBSCRIBE: grant, then deliver one command at QoS 1
                writer.write(b"\x90\x03" + body[:2] + b"\x01")
                writer.write(wire.encode_publish("commands/plant-1/pump-7/reboot", b"now", qos=1, packet_id=77))
            elif kind == 4:  # PUBACK from the bridge for our command
                order.append(f"puback {(body[0] << 8) | body[1]}")
            await writer.drain()

    asyncio.run(run_against(command, Store(0), lambda u: "puback 77" in order, inject=inject))
    assert order[:3] == ["inject commands/plant-1/pump-7/reboot", "injected", "puback 77"]
