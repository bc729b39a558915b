"""Incoming QoS 2 is bounded: a client cannot make the broker hold messages awaiting PUBREL without limit.

Mosquitto 2.0 (the reference) keeps at most ``max_inflight_messages`` (20) incoming QoS 2
messages of a 3.1.1 client awaiting PUBREL; a new one beyond is answered with PUBREC and
dropped, the connection stays, and every PUBREL gets a PUBCOMP. Ours: ``[limits]
max_awaiting_rel`` (20), the same answers, and only packet identifiers held (the spec's
Method B, ``broker/qos2_in.py``). Stock amqtt keeps a task and the whole message for every
identifier (docs/amqtt-notes.md, entry 80) and never answers a PUBREL it holds nothing for
(entry 81): expected to fail.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from tests.protocol import packets as P
from tests.protocol.conftest import BrokerProc, uid, wait_for

LIMIT = 20  # ours (max_awaiting_rel) and Mosquitto's (max_inflight_messages) default


def _pid(p: P.Packet) -> int:
    return int(struct.unpack("!H", p.body[:2])[0])


def _pubrel(pid: int) -> bytes:
    return P.raw((P.PUBREL << 4) | 2, struct.pack("!H", pid))


def _client(server: BrokerProc, prefix: str) -> P.Wire:
    w = P.Wire(server.port)
    assert w.connect(uid(prefix))[0] == 0
    return w


def _fence(pub: P.Wire, sub: P.Wire, topic: str) -> list[bytes]:
    """Payloads ``sub`` receives on ``topic`` up to a QoS 1 marker ``pub`` publishes now (in order after the rest)."""
    pub.send(P.publish(topic, b"fence", qos=1, pid=65000))
    assert _pid(pub.recv_type(P.PUBACK)) == 65000
    got: list[bytes] = []
    while True:
        p = sub.recv_type(P.PUBLISH)
        payload = p.publish_fields()[2]
        if payload == b"fence":
            return got
        got.append(payload)


def test_qos2_beyond_the_limit_is_acknowledged_and_dropped(server: BrokerProc) -> None:
    topic = uid("q2cap")
    sub = _client(server, "sub")
    assert sub.subscribe(topic, 0) == 0
    pub = _client(server, "pub")
    n = LIMIT + 10
    for i in range(1, n + 1):
        pub.send(P.publish(topic, b"m%d" % i, qos=2, pid=i))
    recs = [_pid(pub.recv_type(P.PUBREC)) for _ in range(n)]
    assert recs == list(range(1, n + 1)), "every QoS 2 PUBLISH is answered with PUBREC, in order"
    assert pub.ping(), "the connection stays open (Mosquitto does not close it either)"
    for i in range(1, n + 1):
        pub.send(_pubrel(i))
    comps = [_pid(pub.recv_type(P.PUBCOMP)) for _ in range(n)]
    assert comps == list(range(1, n + 1)), "every PUBREL is answered with PUBCOMP, held or dropped"
    got = _fence(pub, sub, topic)
    assert got == [b"m%d" % i for i in range(1, LIMIT + 1)], f"{len(got)} delivered; expected the first {LIMIT}"
    # Released identifiers are free again: the next QoS 2 message is delivered.
    pub.send(P.publish(topic, b"again", qos=2, pid=1))
    assert _pid(pub.recv_type(P.PUBREC)) == 1
    pub.send(_pubrel(1))
    assert _pid(pub.recv_type(P.PUBCOMP)) == 1
    assert _fence(pub, sub, topic) == [b"again"]
    for w in (pub, sub):
        w.send(P.disconnect())
        w.close()


def test_pubrel_for_an_unknown_packet_id_gets_pubcomp(server: BrokerProc) -> None:
    # A PUBREL resent after a reconnect, or for a message the broker dropped: the client's
    # flow ends only with PUBCOMP (MQTT 3.1.1 section 4.3.3: the receiver MUST respond to a
    # PUBREL with a PUBCOMP).
    pub = _client(server, "pub")
    pub.send(_pubrel(4242))
    p = pub.recv(timeout=5)
    assert p is not None and p.type == P.PUBCOMP and _pid(p) == 4242, f"expected PUBCOMP 4242, got {p}"
    pub.send(P.disconnect())
    pub.close()


@pytest.mark.brokers("edgemq", "mosquitto")  # stock amqtt also delivers a resend once (it replaces the flow)
def test_qos2_resend_before_pubrel_is_not_delivered_twice(server: BrokerProc) -> None:
    topic = uid("q2dup")
    sub = _client(server, "sub")
    assert sub.subscribe(topic, 0) == 0
    pub = _client(server, "pub")
    pub.send(P.publish(topic, b"once", qos=2, pid=9))
    assert _pid(pub.recv_type(P.PUBREC)) == 9
    pub.send(P.publish(topic, b"once", qos=2, pid=9, dup=True))  # PUBREC lost, say: sent again
    assert _pid(pub.recv_type(P.PUBREC)) == 9
    pub.send(_pubrel(9))
    assert _pid(pub.recv_type(P.PUBCOMP)) == 9
    assert _fence(pub, sub, topic) == [b"once"]
    for w in (pub, sub):
        w.send(P.disconnect())
        w.close()


class _Drain(threading.Thread):
    """Reads a connection's packets in the background, counting PUBRECs (so the broker's writes never stall)."""

    def __init__(self, wire: P.Wire) -> None:
        super().__init__(daemon=True)
        self.wire = wire
        self.pubrecs = 0
        self.closed = False

    def run(self) -> None:
        while True:
            try:
                p = self.wire.recv(timeout=300)
            except (TimeoutError, OSError):
                return
            if p is None:
                self.closed = True
                return
            if p.type == P.PUBREC:
                self.pubrecs += 1


# (messages, payload bytes): many identifiers with small payloads, and few with large ones.
FLOODS = {"50k-ids-1KiB": (50_000, 1024), "100-ids-512KiB": (100, 512 * 1024)}
MAX_GROWTH = 32 * 1024 * 1024  # stock amqtt holds every payload: >= 50 MB for either flood


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_qos2_never_released_keeps_memory_bounded(server: BrokerProc, flood: str) -> None:
    count, size = FLOODS[flood]
    topic = uid("q2flood")
    other_topic = uid("q2other")
    watcher = _client(server, "watcher")
    assert watcher.subscribe(other_topic, 1) == 1
    other = _client(server, "other")
    pub = _client(server, "flood")
    drain = _Drain(pub)
    drain.start()
    payload = b"x" * size
    before = server.rss()
    deadline = time.monotonic() + 240
    for i in range(1, count + 1):
        assert time.monotonic() < deadline, f"flood not sent within the deadline ({i} of {count})"
        assert pub.send(P.publish(topic, payload, qos=2, pid=i)), f"connection closed after {i - 1} publishes"
        if i == count // 2:
            assert other.ping(30), "another client is not served during the flood"
    wait_for(lambda: drain.pubrecs >= count or drain.closed, 240, f"{count} PUBRECs")
    assert not drain.closed and drain.pubrecs == count, f"{drain.pubrecs} PUBRECs of {count}, closed={drain.closed}"
    growth = server.rss() - before
    assert growth < MAX_GROWTH, f"broker RSS grew {growth / 2**20:.1f} MiB holding {count} QoS 2 messages unreleased"
    # Others are still served: a QoS 1 round trip through the broker.
    other.send(P.publish(other_topic, b"still-here", qos=1, pid=3))
    assert _pid(other.recv_type(P.PUBACK, timeout=30)) == 3
    p = watcher.recv_type(P.PUBLISH, timeout=30)
    assert p.publish_fields()[2] == b"still-here"
    watcher.send(P.puback(p.publish_fields()[1] or 0))
    for w in (pub, other, watcher):
        w.send(P.disconnect())
        w.close()
    drain.join(timeout=10)
