"""Outgoing flow control: a subscriber that stops reading costs bounded memory and slows nobody.

Against ours and Mosquitto (the reference: max_inflight_messages 20, max_queued_messages
1000 by default); stock amqtt is expected to fail (no in-flight window: it writes every
message to the stalled connection and keeps each in ``inflight_out``).
"""

from __future__ import annotations

import socket
import time

from tests.protocol import packets as P
from tests.protocol.conftest import BrokerProc, uid

N = 20_000
BATCH = 250  # the publisher waits for its PUBACKs per batch: a reading subscriber keeps up
PAYLOAD = b"p" * 1024
WINDOW = 20  # both brokers' default max_inflight_messages
GROWTH_BOUND = 12 * 1024 * 1024  # 20 MB of payload alone if the broker kept everything


def _stalled(server: BrokerProc, client_id: str, topic: str) -> P.Wire:
    """A QoS 1 subscriber with a tiny receive buffer, so the kernel does not absorb the stall."""
    w = P.Wire.__new__(P.Wire)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    w.sock, w._buf, w._eof = sock, bytearray(), False
    rc, _ = w.connect(client_id)
    assert rc == 0
    assert w.subscribe(topic, 1) == 1
    return w


def _drain(w: P.Wire, want: int, timeout: float) -> int:
    """Read QoS 0 PUBLISHes until ``want`` arrived or ``timeout``; returns how many."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        try:
            p = w.recv(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        assert p is not None, "the normal subscriber was disconnected"
        got += p.type == P.PUBLISH
    return got


def test_stalled_subscriber_bounded_and_others_unaffected(server: BrokerProc) -> None:
    topic = uid("stall")
    slow = _stalled(server, uid("slow"), topic)
    normal, pub = P.Wire(server.port), P.Wire(server.port)
    assert normal.connect(uid("normal"))[0] == 0 and normal.subscribe(topic, 0) == 0
    assert pub.connect(uid("pub"))[0] == 0
    assert normal.ping() and slow.ping() is not None
    before = server.rss()
    received = 0
    deadline = time.monotonic() + 240
    for start in range(0, N, BATCH):
        assert time.monotonic() < deadline, f"only {start} of {N} published in time"
        pub.send(b"".join(P.publish(topic, PAYLOAD, qos=1, pid=i % 65535 + 1) for i in range(start, start + BATCH)))
        for _ in range(BATCH):
            pub.recv_type(P.PUBACK, timeout=60)
        received += _drain(normal, BATCH, 60)
        assert received == start + BATCH, f"normal subscriber got {received} of {start + BATCH}"
    assert server.alive()
    growth = server.rss() - before
    assert growth < GROWTH_BOUND, f"broker RSS grew by {growth / 1e6:.1f} MB for a subscriber that does not read"
    # The slow one starts reading: at most WINDOW unacknowledged messages at a time.
    first = [p for p in slow.quiet_for(3) if p.type == P.PUBLISH]
    assert 0 < len(first) <= WINDOW, f"{len(first)} unacknowledged messages in flight (window {WINDOW})"
    assert all(p.qos == 1 for p in first)
    # Acknowledging frees the window: more come, never more than WINDOW unacknowledged.
    slow.send(b"".join(P.puback(p.publish_fields()[1] or 0) for p in first))
    more = [p for p in slow.quiet_for(3) if p.type == P.PUBLISH]
    assert more, "acknowledging did not free the window"
    if server.kind != "mosquitto":
        # Mosquitto 2.0.11 refills the window once per PUBACK (20 PUBACKs at once released
        # 400 messages when measured); MQTT 3.1.1 sets no window, so that is not a defect.
        assert len(more) <= WINDOW, f"{len(more)} in flight after acknowledging {len(first)}"
    for w in (slow, normal, pub):
        w.send(P.disconnect())
        w.close()


def test_qos2_deliveries_respect_the_inflight_window(server: BrokerProc) -> None:
    topic, n = uid("stall2"), 200
    slow = _stalled(server, uid("slow2"), topic)
    assert slow.subscribe(topic, 2) == 2
    normal, pub = P.Wire(server.port), P.Wire(server.port)
    assert normal.connect(uid("normal"))[0] == 0 and normal.subscribe(topic, 0) == 0
    assert pub.connect(uid("pub"))[0] == 0
    for i in range(n):  # one flow at a time (Mosquitto drops incoming QoS 2 beyond its window)
        pub.send(P.publish(topic, PAYLOAD, qos=2, pid=i + 1))
        pid = pub.recv_type(P.PUBREC, timeout=60).body[:2]
        pub.send(P.raw((P.PUBREL << 4) | 2, pid))
        pub.recv_type(P.PUBCOMP, timeout=60)
    assert _drain(normal, n, 60) == n  # the broker has routed every message
    first = [p for p in slow.quiet_for(3) if p.type == P.PUBLISH]
    assert 0 < len(first) <= WINDOW, f"{len(first)} unacknowledged QoS 2 messages in flight (window {WINDOW})"
    assert all(p.qos == 2 for p in first)
    # Complete their flows: PUBREC, PUBREL back, PUBCOMP; the window refills.
    slow.send(b"".join(P.raw(P.PUBREC << 4, p.body[2 + len(topic) : 4 + len(topic)]) for p in first))
    rels = [p for p in slow.quiet_for(2) if p.type == P.PUBREL]
    assert len(rels) == len(first)
    slow.send(b"".join(P.raw(P.PUBCOMP << 4, p.body[:2]) for p in rels))
    more = [p for p in slow.quiet_for(3) if p.type == P.PUBLISH]
    assert more, "completing the flows did not free the window"
    if server.kind != "mosquitto":  # see test_stalled_subscriber_bounded_and_others_unaffected
        assert len(more) <= WINDOW
    for w in (slow, normal, pub):
        w.send(P.disconnect())
        w.close()
