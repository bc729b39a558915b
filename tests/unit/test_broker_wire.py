"""broker.wire: framing, PUBLISH decode, and encodings that amqtt's own decoder reads back."""

from __future__ import annotations

import asyncio

from amqtt.adapters import BufferReader
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket

from broker.wire import Frame, decode_publish, encode_puback, encode_publish, packet_id, split_frame


def _amqtt_publish(data: bytes) -> PublishPacket:
    async def main() -> PublishPacket:
        reader = BufferReader(data)
        fixed = await MQTTFixedHeader.from_stream(reader)
        packet: PublishPacket = await PublishPacket.from_stream(reader, fixed_header=fixed)
        return packet

    return asyncio.run(main())


def test_split_frame_needs_a_whole_header() -> None:
    assert split_frame(b"") is None
    assert split_frame(b"\x30") is None
    assert split_frame(b"\x30\x80") is None  # continuation bit: one more length byte due
    assert split_frame(b"\x30\x05abc") == Frame(0x30, 5, 2)
    assert split_frame(b"\x30\x80\x01") == Frame(0x30, 128, 3)
    assert split_frame(b"\x30\xff\xff\xff\xff\x01") == -1


def test_split_frame_from_an_offset() -> None:
    buf = b"\x40\x02\x00\x01" + b"\x30\x80\x01"
    assert split_frame(buf, 4) == Frame(0x30, 128, 7)


def test_encode_publish_is_read_back_by_amqtt_and_by_decode_publish() -> None:
    payload = b"x" * 300  # remaining length needs two bytes
    data = encode_publish(b"telemetry/p/d/t", payload, 1, 4242, retain=True, dup=True)
    packet = _amqtt_publish(data)
    assert (packet.topic_name, packet.data, packet.qos, packet.packet_id) == ("telemetry/p/d/t", payload, 1, 4242)
    assert packet.retain_flag and packet.dup_flag
    frame = split_frame(data)
    assert isinstance(frame, Frame)
    p = decode_publish(frame.first, data[frame.body_at :])
    assert (p.topic, p.qos, p.retain, p.dup, p.packet_id) == ("telemetry/p/d/t", 1, True, True, 4242)
    assert p.payload == payload


def test_qos0_publish_has_no_packet_id() -> None:
    data = encode_publish("t/é".encode(), b"", 0, None)
    packet = _amqtt_publish(data)
    assert (packet.topic_name, packet.data, packet.qos) == ("t/é", b"", 0)
    assert decode_publish(data[0], data[2:]).packet_id is None


def test_puback_matches_amqtt() -> None:
    assert encode_puback(513) == PubackPacket.build(513).to_bytes()
    assert packet_id(encode_puback(513)[2:]) == 513
