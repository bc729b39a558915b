"""Outgoing QoS 2 survives a reconnect [MQTT-4.4.0-1]: PUBLISH (DUP) before PUBREC, PUBREL after.

Against ours, Mosquitto (reference) and stock amqtt (expected to fail: its flow drops the
message from ``inflight_out`` when the connection goes, docs/amqtt-notes.md entry 61).
"""

from __future__ import annotations

import struct

from tests.protocol import packets as P
from tests.protocol.conftest import BrokerProc, uid


def _ack(kind: int, pid: int, flags: int = 0) -> bytes:
    return P.raw((kind << 4) | flags, struct.pack("!H", pid))


def _pid(p: P.Packet) -> int:
    return int(struct.unpack("!H", p.body[:2])[0])


def _persistent_qos2_subscriber(server: BrokerProc, cid: str, topic: str) -> P.Wire:
    w = P.Wire(server.port)
    assert w.connect(cid, clean=False)[0] == 0
    assert w.subscribe(topic, 2) == 2
    return w


def _publish_qos2(server: BrokerProc, topic: str, payload: bytes) -> None:
    pub = P.Wire(server.port)
    assert pub.connect(uid("pub"))[0] == 0
    pub.send(P.publish(topic, payload, qos=2, pid=7))
    assert _pid(pub.recv_type(P.PUBREC)) == 7
    pub.send(_ack(P.PUBREL, 7, 2))
    assert _pid(pub.recv_type(P.PUBCOMP)) == 7
    pub.send(P.disconnect())
    pub.close()


def _reconnect(server: BrokerProc, cid: str) -> P.Wire:
    w = P.Wire(server.port)
    rc, present = w.connect(cid, clean=False)
    assert rc == 0 and present, "the persistent session must be kept"
    return w


def _discard(server: BrokerProc, cid: str) -> None:
    w = P.Wire(server.port)
    w.connect(cid, clean=True)
    w.send(P.disconnect())
    w.close()


def test_qos2_publish_resent_with_dup_when_subscriber_left_before_pubrec(server: BrokerProc) -> None:
    topic, cid = uid("q2pub"), uid("device")
    w = _persistent_qos2_subscriber(server, cid, topic)
    _publish_qos2(server, topic, b"exactly-once")
    first = w.recv_type(P.PUBLISH)
    assert first.qos == 2 and first.publish_fields()[2] == b"exactly-once"
    w.reset()  # gone before PUBREC
    w = _reconnect(server, cid)
    again = w.recv_type(P.PUBLISH, timeout=10)
    topic_got, pid, payload = again.publish_fields()
    assert (topic_got, payload, again.qos) == (topic, b"exactly-once", 2) and again.dup
    w.send(_ack(P.PUBREC, pid or 0))
    assert _pid(w.recv_type(P.PUBREL)) == pid
    w.send(_ack(P.PUBCOMP, pid or 0))
    w.send(P.disconnect())
    w.close()
    _discard(server, cid)


def test_qos2_pubrel_resent_when_subscriber_left_before_pubcomp(server: BrokerProc) -> None:
    topic, cid = uid("q2rel"), uid("device")
    w = _persistent_qos2_subscriber(server, cid, topic)
    _publish_qos2(server, topic, b"released")
    first = w.recv_type(P.PUBLISH)
    pid = first.publish_fields()[1] or 0
    w.send(_ack(P.PUBREC, pid))
    assert _pid(w.recv_type(P.PUBREL)) == pid
    w.reset()  # gone before PUBCOMP
    w = _reconnect(server, cid)
    p = w.recv(timeout=10)
    assert p is not None and p.type == P.PUBREL, f"expected PUBREL again, got {p}"
    assert p.flags == 2 and _pid(p) == pid
    w.send(_ack(P.PUBCOMP, pid))
    # The PUBLISH is not sent again after PUBREC (the receiver already owns the message).
    assert not [q for q in w.quiet_for(1.0) if q.type == P.PUBLISH]
    w.send(P.disconnect())
    w.close()
    _discard(server, cid)
