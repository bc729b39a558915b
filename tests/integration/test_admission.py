"""The ownership admission hook of ``EdgeBroker`` (issue 3), over real sockets.

An in-process ``EdgeBroker`` (its own event-loop thread, free 127.0.0.1 port) gets an
``admission`` callable driven by the test (a table of ``Decision``s per client id);
clients speak raw MQTT through ``tests.protocol.packets.Wire``. A refused CONNECT gets
CONNACK 0x05 and leaves the device that holds the client id, and its session, alone; a
warned one is admitted, counted and logged without flooding.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker.ownership import Decision, Verdict
from broker.server import EdgeBroker, amqtt_config
from tests.integration.conftest import free_port, wait_for
from tests.protocol import packets as p
from tests.protocol.packets import Wire

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0
NOT_AUTHORIZED = 0x05

OWNED = Decision(True, Verdict.OWNED, "b1", "b1 owns s/d")
FOREIGN = Decision(True, Verdict.FOREIGN, "b2", "owner b2 of s/d is alive; admitted (policy warn)")
REFUSED = Decision(False, Verdict.REFUSED, "b2", "owner b2 of s/d is alive: connect there")


@dataclass
class Policy:
    """The admission callable: a decision per client id (OWNED unless set), calls recorded."""

    table: dict[str, Decision | Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, client_id: str) -> Decision:
        self.calls.append(client_id)
        answer = self.table.get(client_id, OWNED)
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class Running:
    port: int
    broker: EdgeBroker
    policy: Policy


@pytest.fixture
def running() -> Iterator[Running]:
    port = free_port()
    policy = Policy()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop

        async def main() -> None:
            holder["stop"] = asyncio.Event()
            broker = EdgeBroker(amqtt_config("127.0.0.1", port), admission=policy)
            holder["broker"] = broker
            await broker.start()
            ready.set()
            await holder["stop"].wait()
            await broker.shutdown()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by the waiting test
            holder["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="admission-broker", daemon=True)
    thread.start()
    assert ready.wait(WAIT), "broker did not start"
    if "error" in holder:
        raise holder["error"]
    yield Running(port, holder["broker"], policy)
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(WAIT)


def _cid() -> str:
    return f"dev-s-{uuid.uuid4().hex[:8]}"


def _publish(port: int, topic: str, payload: bytes) -> None:
    w = Wire(port)
    try:
        assert w.connect(_cid()) == (0, False)
        w.send(p.publish(topic, payload, qos=1, pid=1))
        w.recv_type(p.PUBACK)
    finally:
        w.close()


def _received(w: Wire, topic: str) -> bytes:
    got = w.recv_type(p.PUBLISH, WAIT)
    name, pid, payload = got.publish_fields()
    assert name == topic
    if pid is not None:
        w.send(p.puback(pid))
    return payload


@pytest.mark.parametrize("clean", [True, False])
def test_refused_client_gets_0x05_and_the_device_stays_connected(running: Running, clean: bool) -> None:
    cid, topic = _cid(), f"commands/s/{uuid.uuid4().hex[:8]}"
    device = Wire(running.port)
    assert device.connect(cid, clean=False) == (0, False)
    assert device.subscribe(topic + "/#") == 1
    session = running.broker.sessions[cid][0]

    running.policy.table[cid] = REFUSED  # the owner came back: newcomers with this id go there
    other = Wire(running.port)
    assert other.connect(cid, clean=clean, will=("status/s/forged", b"will", 1, False)) == (NOT_AUTHORIZED, False)
    assert other.closed_within(WAIT)

    assert device.ping()  # still connected...
    assert running.broker.sessions[cid][0] is session  # ...on the same session, will untouched
    assert not session.will_flag
    _publish(running.port, topic + "/reboot", b"x")
    assert _received(device, topic + "/reboot") == b"x"  # ...and its subscription served
    assert running.broker.counters.admission_refused == 1
    assert running.policy.calls.count(cid) == 2
    device.close()


def test_refused_clean_session_keeps_the_offline_sessions_queue(running: Running) -> None:
    cid, topic = _cid(), f"commands/s/{uuid.uuid4().hex[:8]}"
    device = Wire(running.port)
    assert device.connect(cid, clean=False) == (0, False)
    assert device.subscribe(topic, qos=1) == 1
    device.send(p.disconnect())
    device.close()
    wait_for(lambda: cid not in running.broker.client_ids(), WAIT, "the device to go offline")
    _publish(running.port, topic, b"queued")

    running.policy.table[cid] = REFUSED
    other = Wire(running.port)
    assert other.connect(cid, clean=True) == (NOT_AUTHORIZED, False)  # would delete the session if admitted
    other.close()

    running.policy.table[cid] = OWNED
    back = Wire(running.port)
    assert back.connect(cid, clean=False) == (0, True)
    assert _received(back, topic) == b"queued"
    back.close()


def test_warned_client_is_admitted_counted_and_logged_rate_limited(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.server")
    wires = []
    for _ in range(3):
        cid = _cid()
        running.policy.table[cid] = FOREIGN
        w = Wire(running.port)
        assert w.connect(cid) == (0, False)
        assert w.ping()
        wires.append(w)
    counters = running.broker.counters
    assert (counters.admission_warned, counters.admission_refused, counters.admission_owned) == (3, 0, 0)
    assert caplog.text.count(FOREIGN.reason) == 1  # the first; the others within 30 s are suppressed
    owned = Wire(running.port)
    assert owned.connect(_cid()) == (0, False)
    assert counters.admission_owned == 1 and counters.admission_warned == 3
    for w in [*wires, owned]:
        w.close()


def test_a_failing_admission_check_admits(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    cid = _cid()
    running.policy.table[cid] = RuntimeError("ring not loaded")
    w = Wire(running.port)
    assert w.connect(cid) == (0, False)
    assert w.ping()
    assert "ring not loaded" in caplog.text
    w.close()
