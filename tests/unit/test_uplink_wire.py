"""The uplink's MQTT codec (bridge/wire.py): round trips, split reads, malformed input.

The client-to-server PUBLISH has the same layout as the server-to-client one, so the
parser reads back what the encoders write. Cross-checked against paho's own encoder
for CONNECT/PUBLISH where paho can produce the same bytes.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import wire
from broker.errors import LinkBroken

topics = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"), min_size=1, max_size=40
)
payloads = st.binary(max_size=300)
versions = st.sampled_from([wire.MQTT311, wire.MQTT5])
pids = st.integers(1, 0xFFFF)


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(topics, payloads, st.sampled_from([0, 1]), st.booleans(), pids), max_size=20),
    version=versions,
    chunk=st.integers(1, 64),
)
def test_publish_batch_round_trips_through_any_split(
    items: list[tuple[str, bytes, int, bool, int]], version: int, chunk: int
) -> None:
    batch = [(t, p, q, r, pid if q else 0, f"site/b/{i}") for i, (t, p, q, r, pid) in enumerate(items)]
    data = wire.encode_publishes(batch, version=version)
    parser = wire.Parser(version=version)
    got: list[wire.Packet] = []
    for i in range(0, len(data), chunk):  # the network delivers any split
        got += parser.feed(data[i : i + chunk])
    assert len(got) == len(batch)
    for pkt, (topic, payload, qos, retain, pid, mid) in zip(got, batch, strict=True):
        assert isinstance(pkt, wire.Publish)
        assert (pkt.topic, pkt.payload, pkt.qos, pkt.retain, pkt.packet_id) == (topic, payload, qos, retain, pid)
        if version == wire.MQTT5:
            assert pkt.properties[wire.USER_PROPERTY] == [("edgemq-id", mid)]
        else:
            assert pkt.properties == {}


@settings(max_examples=100, deadline=None)
@given(topic=topics, payload=payloads, qos=st.sampled_from([0, 1]), retain=st.booleans(), pid=pids, version=versions)
def test_single_publish_encoder_agrees_with_the_batch_encoder(
    topic: str, payload: bytes, qos: int, retain: bool, pid: int, version: int
) -> None:
    one = wire.encode_publish(
        topic,
        payload,
        qos=qos,
        retain=retain,
        packet_id=pid if qos else 0,
        version=version,
        user_properties=[("edgemq-id", "s/b/1")] if version == wire.MQTT5 else (),
    )
    batch = wire.encode_publishes([(topic, payload, qos, retain, pid if qos else 0, "s/b/1")], version=version)
    assert one == batch


def test_publish_matches_paho_bytes() -> None:
    """Same bytes as paho's encoder for a QoS 1 PUBLISH (3.1.1 and 5 with a user property)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = ("edgemq-id", "plant-1/a1/42")
    ours5 = wire.encode_publish(
        "telemetry/x",
        b"hello",
        qos=1,
        packet_id=7,
        version=wire.MQTT5,
        user_properties=[("edgemq-id", "plant-1/a1/42")],
    )
    paho_props = props.pack()  # type: ignore[no-untyped-call]
    body = b"\x00\x0btelemetry/x" + b"\x00\x07" + paho_props + b"hello"
    assert ours5 == bytes((0x32, len(body))) + body
    ours3 = wire.encode_publish("telemetry/x", b"hello", qos=1, packet_id=7)
    assert ours3 == b"\x32\x14\x00\x0btelemetry/x\x00\x07hello"


@settings(max_examples=200, deadline=None)
@given(pid=pids, reason=st.sampled_from([0, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]), version=versions)
def test_puback_round_trips(pid: int, reason: int, version: int) -> None:
    data = wire.encode_puback(pid, version=version, reason=reason if version == wire.MQTT5 else 0)
    (pkt,) = wire.Parser(version=version).feed(data)
    assert pkt == wire.PubAck(pid, reason if version == wire.MQTT5 else 0)


def test_mqtt5_puback_with_properties_is_read() -> None:
    reason_string = b"\x1f\x00\x04nope"
    body = b"\x12\x34\x87" + bytes((len(reason_string),)) + reason_string
    (pkt,) = wire.Parser(version=wire.MQTT5).feed(bytes((0x40, len(body))) + body)
    assert pkt == wire.PubAck(0x1234, 0x87)


@pytest.mark.parametrize(
    ("version", "data", "why"),
    [
        (wire.MQTT311, b"\x40\x03\x00\x01\x00", "PUBACK of 3 bytes"),  # 3.1.1: exactly 2
        (wire.MQTT311, b"\x40\x01\x00", "PUBACK of 1 bytes"),
        (wire.MQTT5, b"\x40\x00", "PUBACK of 0 bytes"),
        (wire.MQTT311, b"\x40\x02\x00\x00", "packet id 0"),
        (wire.MQTT311, b"\x42\x02\x00\x01", "reserved flags"),
        (wire.MQTT5, b"\x40\x05\x00\x01\x00\x05\x1f", "past the end"),  # property block longer than the packet
        (wire.MQTT5, b"\x40\x06\x00\x01\x00\x02\x7f\x00", "unknown property"),
        (wire.MQTT5, b"\x40\x07\x00\x01\x00\x03\x1f\x00\x05", "past the end"),  # reason string cut short
        (wire.MQTT311, b"\x40\xff\xff\xff\xff\x01", "more than 4 bytes"),
        (wire.MQTT311, b"\x10\x00", "unexpected packet type 1"),  # a CONNECT from the server
        (wire.MQTT311, b"\x34\x05\x00\x01t\x00\x01", "QoS 2"),
        (wire.MQTT311, b"\x20\x02\x02\x00", "reserved CONNACK flags"),
        (wire.MQTT311, b"\xd0\x01\x00", "PINGRESP with a body"),
        (wire.MQTT311, b"\x30\x04\x00\x02\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_packets_are_protocol_violations(version: int, data: bytes, why: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match=why) as info:
        wire.Parser(version=version).feed(data)
    assert isinstance(info.value, LinkBroken) and info.value.recoverable


def test_a_packet_above_the_limit_is_refused_before_it_is_buffered() -> None:
    parser = wire.Parser(max_packet=1024)
    with pytest.raises(wire.ProtocolViolation, match="exceeds the limit"):
        parser.feed(b"\x30" + wire.varint(2048))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), version=versions)
def test_garbage_never_raises_anything_but_a_protocol_violation(data: bytes, version: int) -> None:
    with contextlib.suppress(wire.ProtocolViolation):
        wire.Parser(version=version).feed(data)


def test_incomplete_packets_wait_for_more_bytes() -> None:
    parser = wire.Parser()
    data = wire.encode_puback(5) + wire.encode_publish("commands/p/d/x", b"go", qos=1, packet_id=9)
    assert parser.feed(data[:1]) == []
    assert parser.feed(data[1:5]) == [wire.PubAck(5)]
    (pkt,) = parser.feed(data[5:])
    assert isinstance(pkt, wire.Publish) and pkt.topic == "commands/p/d/x" and pkt.packet_id == 9


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, wire.MAX_REMAINING])
def test_varint_boundaries(n: int) -> None:
    encoded = wire.varint(n)
    assert len(encoded) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    parser = wire.Parser(max_packet=wire.MAX_REMAINING)
    if n == 0:
        assert parser.feed(b"\xd0" + encoded) == [wire.PingResp()]


def test_connect_matches_the_spec_layout() -> None:
    will = wire.Will("edgemq/p/a1/state", b"offline", qos=1, retain=True)
    data = wire.encode_connect("cid", version=wire.MQTT311, keepalive=30, username="u", password="pw", will=will)
    assert data[0] == 0x10
    body = data[2:]
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 4
    assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04  # user, password, will retain, will QoS 1, will; not clean
    assert body[8:10] == b"\x00\x1e"
    v5 = wire.encode_connect("cid", version=wire.MQTT5, session_expiry=0xFFFFFFFF)
    assert v5[2 + 6] == 5 and v5[2 + 10 : 2 + 16] == b"\x05\x11\xff\xff\xff\xff"


def test_connack_suback_disconnect_are_read() -> None:
    p5 = wire.Parser(version=wire.MQTT5)
    connack = b"\x20\x06\x01\x00\x03\x21\x00\x14"  # session present, success, Receive Maximum 20
    suback = b"\x90\x05\x00\x02\x00\x01\x80"
    disconnect = b"\xe0\x01\x8b"  # server shutting down
    assert p5.feed(connack + suback + disconnect) == [
        wire.ConnAck(True, 0, {wire.RECEIVE_MAXIMUM: 20}),
        wire.SubAck(2, (1, 0x80)),
        wire.Disconnect(0x8B),
    ]
    assert wire.Parser().feed(b"\x20\x02\x00\x05") == [wire.ConnAck(False, 5)]
    with pytest.raises(wire.ProtocolViolation):
        wire.Parser().feed(b"\xe0\x00")  # 3.1.1: a server never sends DISCONNECT
