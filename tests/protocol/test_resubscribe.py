"""A second SUBSCRIBE to the same filter replaces the subscription's QoS [MQTT-3.8.4-3].

Against ours, Mosquitto (reference) and stock amqtt (expected to fail: it keeps the old
QoS while its SUBACK grants the new one, docs/amqtt-notes.md entry 62).
"""

from __future__ import annotations

from tests.protocol import packets as P
from tests.protocol.conftest import BrokerProc, uid


def test_resubscribe_replaces_qos(server: BrokerProc) -> None:
    topic = uid("resub")
    sub = P.Wire(server.port)
    assert sub.connect(uid("sub"))[0] == 0
    assert sub.subscribe(topic, 0, pid=1) == 0
    assert sub.subscribe(topic, 1, pid=2) == 1
    pub = P.Wire(server.port)
    assert pub.connect(uid("pub"))[0] == 0
    pub.send(P.publish(topic, b"one", qos=1, pid=3))
    got = sub.recv_type(P.PUBLISH)
    assert got.qos == 1, f"delivered at QoS {got.qos} after re-subscribing at QoS 1"
    sub.send(P.puback(got.publish_fields()[1] or 0))
    assert not [p for p in sub.quiet_for(1.0) if p.type == P.PUBLISH], "delivered twice"
    for w in (sub, pub):
        w.send(P.disconnect())
        w.close()
