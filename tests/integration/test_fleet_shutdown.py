"""A fleet whose connections drop while it publishes, then stops, leaves nothing on the event loop's floor.

The device client registers its socket with the event loop for writing whenever
paho queues a packet. If that registration runs after the socket closed (the
broker dropped the connection in the same loop step), asyncio logs
"Exception in callback ... add_writer ... Bad file descriptor" with a traceback
(seen by the hundred in 1,000-device simulation runs). Here 50 devices publish
fast through a TCP proxy that drops every connection three times; the fleet is
then stopped. Every exception that reaches the loop's handler, and every log
record that mentions a bad file descriptor, is a failure.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from broker.config import BrokerConfig, SiteConfig
from devices.fleet import Ack, FleetConfig, FleetResult, FleetStats, run_fleet
from tests.integration.conftest import free_port
from tests.integration.netproxy import TcpProxy

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

DEVICES = 50
CUTS = 6


@pytest.fixture
def proxied_mosquitto(mosquitto: Callable[..., tuple[str, int]]) -> Iterator[TcpProxy]:
    _, port = mosquitto()
    proxy = TcpProxy(free_port(), port)
    yield proxy
    proxy.close()


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_dropped_connections_and_a_stop_log_no_socket_tracebacks(
    proxied_mosquitto: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = proxied_mosquitto
    caplog.set_level(logging.WARNING)
    site = SiteConfig(
        id=f"t{uuid.uuid4().hex[:8]}",
        brokers=[BrokerConfig(id=f"a{i + 1}", port=proxy.listen_port) for i in range(3)],
    )
    cfg = FleetConfig(
        site=site, devices=DEVICES, rate=50.0, duration_s=90, connect_batch=DEVICES,
        reconnect_min_s=0.05, reconnect_max_s=0.2, progress_interval_s=0.05,
    )  # fmt: skip
    loop_errors: list[dict[str, Any]] = []
    acks: list[Ack] = []

    async def scenario() -> FleetResult:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        latest: list[FleetStats] = []
        stop = asyncio.Event()
        task = asyncio.create_task(run_fleet(cfg, latest.append, on_ack=acks.append, stop=stop))
        for cut in range(CUTS):
            await _until(lambda: bool(latest) and latest[-1].connected == DEVICES, 30, f"all connected ({cut})")
            acked = latest[-1].acked
            await _until(lambda a=acked: latest[-1].acked >= a + 5 * DEVICES, 30, "traffic")  # type: ignore[misc]
            await asyncio.to_thread(proxy.cut)  # every device connection drops mid-publish
            await _until(lambda: latest[-1].connected == 0, 30, "every connection seen lost")
            await asyncio.to_thread(proxy.restore)
        await _until(lambda: latest[-1].connected == DEVICES, 30, "all reconnected")
        stop.set()
        return await task

    result = asyncio.run(scenario())

    assert result.stopped and result.stats.connected == 0
    assert result.stats.reconnects >= CUTS * DEVICES  # the drops happened, to every device
    for rep in result.devices:  # and the fleet's own contract held through them
        assert sorted(a.seq for a in acks if a.device == rep.device) == list(rep.acked_seqs)
    messages = [f"{c.get('message')}: {c.get('exception')!r}" for c in loop_errors]
    assert not messages, f"{len(messages)} exceptions reached the event loop, e.g. {messages[:3]}"
    bad = [r.getMessage() for r in caplog.records if "Bad file descriptor" in r.getMessage() or r.exc_info]
    assert not bad, bad[:3]


ROUNDS = 5


def test_cancelling_the_fleet_while_devices_connect_returns_without_tracebacks(
    mosquitto: Callable[..., tuple[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled mid-connect, run_fleet returns: no device may run on after its cancellation was lost.

    aiomqtt waits for the CONNACK with asyncio.wait_for, which on Python 3.11 returns
    the result instead of raising when the CONNACK and the cancellation land in the
    same step; such a device used to keep publishing, and run_fleet never returned.
    """
    _, port = mosquitto()
    caplog.set_level(logging.WARNING)
    loop_errors: list[dict[str, Any]] = []
    lost: list[int] = []

    async def one_round(n: int) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        site = SiteConfig(id=f"t{uuid.uuid4().hex[:8]}", brokers=[BrokerConfig(id="a1", port=port)])
        cfg = FleetConfig(site=site, devices=100, rate=20.0, connect_batch=100, progress_interval_s=0.01)
        latest: list[FleetStats] = []
        stop = asyncio.Event()  # only to end a round that hangs, so the test fails instead of hanging
        task = asyncio.create_task(run_fleet(cfg, latest.append, stop=stop))
        # Cancel while the batch is connecting: some devices up, others waiting for their CONNACK.
        await _until(lambda: bool(latest) and latest[-1].connected >= 1, 30, "a first connection")
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=20)
        if not done:
            lost.append(n)
            stop.set()
            await asyncio.wait([task], timeout=30)

    for n in range(ROUNDS):
        asyncio.run(one_round(n))

    assert not lost, f"run_fleet did not return after being cancelled in rounds {lost}"
    messages = [f"{c.get('message')}: {c.get('exception')!r}" for c in loop_errors]
    assert not messages, messages[:3]
    tracebacks = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[:3]
