"""MQTT 3.1.1 wire helpers for the broker's fast path: frame, decode PUBLISH, encode PUBLISH/PUBACK.

How it works: ``split_frame`` finds one whole packet at the start of a byte buffer
(fixed header + remaining length + body) without copying the rest; ``decode_publish``
reads a PUBLISH body that ``broker.mqtt_rules.check_packet`` has already accepted;
``encode_publish`` and ``encode_puback`` build the bytes the broker sends.

What it does not do: no validation beyond framing (that is ``broker.mqtt_rules``),
no sockets, no clocks, no amqtt objects. It exists because building amqtt's packet
objects and streaming them through its adapters costs more than the rest of a
message's handling (docs/amqtt-notes.md, entry 20).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["Frame", "Publish", "decode_publish", "encode_puback", "encode_publish", "packet_id", "split_frame"]

_U16 = struct.Struct("!H")


class Frame(NamedTuple):
    """One packet's framing: its first byte, remaining length and where its body starts."""

    first: int
    length: int
    body_at: int


class Publish(NamedTuple):
    """A decoded PUBLISH."""

    topic: str
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    payload: bytes


def split_frame(buf: bytes | bytearray, start: int = 0) -> Frame | int | None:
    """The frame starting at ``buf[start]``.

    Returns a ``Frame`` once the fixed header is complete (the body may not be, yet:
    the caller compares ``body_at + length`` with what it has; ``body_at`` is an index
    into ``buf``), ``None`` if more bytes are needed for the header, or ``-1`` if the
    remaining length runs past 4 bytes.
    """
    n = len(buf)
    if n - start < 2:
        return None
    length = 0
    shift = 0
    for i in range(start + 1, start + 5):
        if i >= n:
            return None
        b = buf[i]
        length |= (b & 0x7F) << shift
        if not b & 0x80:
            return Frame(buf[start], length, i + 1)
        shift += 7
    return -1


def decode_publish(first: int, body: bytes) -> Publish:
    """Decode a PUBLISH body already accepted by ``mqtt_rules.check_packet``."""
    qos = (first >> 1) & 3
    tlen = _U16.unpack_from(body, 0)[0]
    at = 2 + tlen
    topic = body[2:at].decode("utf-8")
    pid = None
    if qos:
        pid = _U16.unpack_from(body, at)[0]
        at += 2
    return Publish(topic, qos, bool(first & 1), bool(first & 8), pid, body[at:])


def packet_id(body: bytes) -> int:
    """The packet identifier of a PUBACK/PUBREC/PUBREL/PUBCOMP body."""
    return int(_U16.unpack_from(body, 0)[0])


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_publish(
    topic: bytes,
    payload: bytes | bytearray,
    qos: int,
    packet_id: int | None,
    *,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """A whole PUBLISH packet; ``topic`` already UTF-8 encoded."""
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    head = _U16.pack(len(topic)) + topic
    if qos:
        assert packet_id is not None
        head += _U16.pack(packet_id)
    return bytes((first,)) + _remaining_length(len(head) + len(payload)) + head + bytes(payload)


def encode_puback(packet_id: int) -> bytes:
    """A PUBACK for ``packet_id``."""
    return b"\x40\x02" + _U16.pack(packet_id)


def encode_pubrec(packet_id: int) -> bytes:
    """A PUBREC for ``packet_id``."""
    return b"\x50\x02" + _U16.pack(packet_id)


def encode_pubcomp(packet_id: int) -> bytes:
    """A PUBCOMP for ``packet_id``."""
    return b"\x70\x02" + _U16.pack(packet_id)
