"""SUBSCRIBE and UNSUBSCRIBE take effect in the order the client sent them.

A client that sends UNSUBSCRIBE and SUBSCRIBE for the same filter back to back must end
subscribed, and one that sends SUBSCRIBE then UNSUBSCRIBE must end unsubscribed, each
acknowledged in turn. Ours handles both in the connection's reader, in packet order, since
it no longer queues them for the waiter tasks of amqtt's client loop (docs/amqtt-notes.md,
entry 71); these tests pin that, with Mosquitto as the reference. Stock amqtt passes them
here too (its reader hands each packet to a task of its own and its loop usually sees them
one at a time), so it is not run.
"""

from __future__ import annotations

import pytest

from tests.protocol import packets as P
from tests.protocol.conftest import BrokerProc, uid


@pytest.mark.brokers("edgemq", "mosquitto")
def test_unsubscribe_then_subscribe_in_one_write_ends_subscribed(server: BrokerProc) -> None:
    topic = uid("order")
    sub = P.Wire(server.port)
    assert sub.connect(uid("sub"))[0] == 0
    assert sub.subscribe(topic, 0, pid=1) == 0
    sub.send(P.unsubscribe(2, [topic]) + P.subscribe(3, [(topic, 0)]))
    acks = [sub.recv(), sub.recv()]
    assert [(p.type if p else None) for p in acks] == [P.UNSUBACK, P.SUBACK], "acknowledged out of order"
    pub = P.Wire(server.port)
    assert pub.connect(uid("pub"))[0] == 0
    pub.send(P.publish(topic, b"after", qos=1, pid=4))
    pub.recv_type(P.PUBACK)
    got = sub.recv_type(P.PUBLISH, timeout=5)
    assert got.publish_fields()[2] == b"after"
    for w in (sub, pub):
        w.send(P.disconnect())
        w.close()


@pytest.mark.brokers("edgemq", "mosquitto")
def test_subscribe_then_unsubscribe_in_one_write_ends_unsubscribed(server: BrokerProc) -> None:
    topic = uid("order")
    sub = P.Wire(server.port)
    assert sub.connect(uid("sub"))[0] == 0
    sub.send(P.subscribe(1, [(topic, 0)]) + P.unsubscribe(2, [topic]))
    acks = [sub.recv(), sub.recv()]
    assert [(p.type if p else None) for p in acks] == [P.SUBACK, P.UNSUBACK]
    pub = P.Wire(server.port)
    assert pub.connect(uid("pub"))[0] == 0
    pub.send(P.publish(topic, b"after", qos=1, pid=3))
    pub.recv_type(P.PUBACK)
    assert not [p for p in sub.quiet_for(1.0) if p.type == P.PUBLISH], "delivered after UNSUBSCRIBE"
    for w in (sub, pub):
        w.send(P.disconnect())
        w.close()


@pytest.mark.brokers("edgemq")  # Mosquitto lets clients publish to $-topics other than $SYS: no reference
def test_qos2_publish_to_dollar_topic_closes_the_connection_and_fires_the_will(server: BrokerProc) -> None:
    """amqtt refuses a $-topic PUBLISH in ``_handle_message_delivery`` (QoS 2 reaches it after the
    PUBREL) and its client loop then just stops: no will, the session left "connected". Ours
    closes the connection as for any protocol violation, and the will fires (entry 71). Since
    incoming QoS 2 takes the fast path (entry 80) the close comes at the PUBLISH itself, before
    any PUBREC; a broker that answers PUBREC first gets its PUBREL and must close then."""
    will_topic = uid("will")
    watcher = P.Wire(server.port)
    assert watcher.connect(uid("watch"))[0] == 0
    assert watcher.subscribe(will_topic, 0) == 0
    bad = P.Wire(server.port)
    client_id = uid("bad")
    assert bad.connect(client_id, will=(will_topic, b"gone", 0, False))[0] == 0
    bad.send(P.publish(f"${uid('x')}", b"no", qos=2, pid=5))
    try:
        first = bad.recv(5)
    except TimeoutError:
        raise AssertionError("neither PUBREC nor a close after a $-topic QoS 2 PUBLISH") from None
    if first is not None:  # PUBREC: complete the flow, then the close must come
        assert first.type == P.PUBREC, first
        bad.send(P.raw((P.PUBREL << 4) | 0x02, b"\x00\x05"))
        assert bad.closed_within(5), "connection left open after a $-topic PUBLISH"
    got = watcher.recv_type(P.PUBLISH, timeout=5)
    assert got.publish_fields()[2] == b"gone"
    again = P.Wire(server.port)  # the session is not left "connected": the id can come back at once
    assert again.connect(client_id)[0] == 0
    for w in (watcher, again):
        w.send(P.disconnect())
        w.close()
