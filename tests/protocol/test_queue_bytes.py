"""A session's queue is bounded in bytes too: ``[limits] max_queued_bytes``, as Mosquitto's of the same name.

Both brokers are configured the same (``max_queued_bytes`` 1 MiB, ``max_queued_messages``
1000, ``max_inflight_messages`` 20) and sent 25 MiB of QoS 1 messages for a subscriber that
is offline (persistent session) or connected but not reading. The payload bytes it is then
given are bounded, and so is the broker's memory. Mosquitto keeps the oldest (it refuses new
messages once full, and counts the in-flight ones in the bound); ours keeps the newest
(oldest dropped, counted in ``dropped_out``, as for ``max_queued_messages``). Stock amqtt
has no such bound (and discards the anonymous persistent session): expected to fail.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from tests.protocol import packets as P
from tests.protocol.conftest import BrokerProc, uid

QUEUE_BYTES = 1024 * 1024
SIZE = 128 * 1024
COUNT = 200  # 25 MiB
WINDOW = 20
KEPT = QUEUE_BYTES // SIZE  # 8
MAX_GROWTH = 12 * 1024 * 1024  # the whole 25 MiB held would exceed it twice


def _spawn(server: BrokerProc, spawn: Callable[..., BrokerProc]) -> BrokerProc:
    return spawn(server.kind, max_queued_bytes=QUEUE_BYTES, max_queued_messages=1000, max_inflight_messages=WINDOW)


def _publish_all(proc: BrokerProc, topic: str) -> None:
    pub = P.Wire(proc.port)
    assert pub.connect(uid("pub"))[0] == 0
    pad = b"p" * (SIZE - 4)
    for i in range(COUNT):
        pub.send(P.publish(topic, struct.pack("!I", i) + pad, qos=1, pid=i + 1))
        assert pub.recv_type(P.PUBACK).body[:2] == struct.pack("!H", i + 1)
    pub.send(P.disconnect())
    pub.close()


def _take(w: P.Wire, expected: int) -> list[int]:
    """Read and acknowledge ``expected`` messages, then whatever else comes while the line is quiet."""
    got: list[int] = []

    def take(p: P.Packet) -> None:
        if p.type == P.PUBLISH:
            _, pid, payload = p.publish_fields()
            assert len(payload) == SIZE
            got.append(struct.unpack("!I", payload[:4])[0])
            if pid is not None:
                w.send(P.puback(pid))

    while len(got) < expected:
        take(w.recv_type(P.PUBLISH, timeout=30))
    while extra := w.quiet_for(1.0):  # a broker without the bound sends the rest at once (at most COUNT)
        for p in extra:
            take(p)
    return got


def test_offline_session_queue_is_bounded_in_bytes(server: BrokerProc, spawn: Callable[..., BrokerProc]) -> None:
    proc = _spawn(server, spawn)
    topic, cid = uid("qbytes"), uid("device")
    sub = P.Wire(proc.port)
    assert sub.connect(cid, clean=False)[0] == 0
    assert sub.subscribe(topic, 1) == 1
    sub.send(P.disconnect())
    sub.close()
    before = proc.rss()
    _publish_all(proc, topic)
    growth = proc.rss() - before
    sub = P.Wire(proc.port)
    rc, present = sub.connect(cid, clean=False)
    assert rc == 0 and present, "the persistent session must be kept"
    got = _take(sub, KEPT)
    assert len(got) * SIZE <= QUEUE_BYTES, f"{len(got)} messages of {SIZE} bytes queued (bound {QUEUE_BYTES})"
    if server.kind == "mosquitto":
        assert got == list(range(KEPT)), got  # the oldest kept, new ones refused
    else:
        assert got == list(range(COUNT - KEPT, COUNT)), got  # the newest kept, oldest dropped
    assert growth < MAX_GROWTH, f"broker RSS grew {growth / 2**20:.1f} MiB for an offline subscriber"
    sub.send(P.disconnect())
    sub.close()


def test_stalled_subscriber_queue_is_bounded_in_bytes(server: BrokerProc, spawn: Callable[..., BrokerProc]) -> None:
    proc = _spawn(server, spawn)
    topic = uid("qstall")
    sub = P.Wire(proc.port)
    assert sub.connect(uid("stalled"))[0] == 0
    assert sub.subscribe(topic, 1) == 1
    before = proc.rss()
    _publish_all(proc, topic)  # the subscriber reads nothing meanwhile
    growth = proc.rss() - before
    # Ours: the window, then the newest that fit. Mosquitto counts the in-flight messages' bytes
    # in max_queued_bytes (no max_inflight_bytes): with 20 x 128 KiB in flight, nothing is queued.
    expected = [*range(WINDOW), *range(COUNT - KEPT, COUNT)]
    if server.kind == "mosquitto":
        expected = list(range(WINDOW))
    got = _take(sub, len(expected))
    assert got == expected, got
    assert growth < MAX_GROWTH, f"broker RSS grew {growth / 2**20:.1f} MiB for a subscriber that does not read"
    sub.send(P.disconnect())
    sub.close()
