"""The uplink's MQTT 3.1.1 / 5 codec: bytes in, packets out; packets in, bytes out.

How it works
------------
Encoders turn the packets a bridge *sends* (CONNECT, PUBLISH, PUBACK, SUBSCRIBE,
PINGREQ, DISCONNECT) into bytes; :class:`Parser` takes bytes in whatever pieces
the network delivers and returns the packets a bridge *receives* (CONNACK,
PUBLISH, PUBACK, SUBACK, PINGRESP, DISCONNECT) as small frozen objects.
:func:`encode_publishes` encodes a whole batch into one ``bytes`` for one
transport write: that is the uplink's hot path, so it avoids per-message
objects (topics are encoded once per batch through a small cache).

Anything malformed (a bad remaining length, a PUBACK with the wrong size or packet
id 0, reserved flag bits, a property running past its packet, a packet type a
client never receives, a packet above ``max_packet``) raises
:class:`ProtocolViolation`, a :class:`~broker.errors.LinkBroken`: the shell drops
the connection and reconnects, as the MQTT specs require of a client.

What it does not do
-------------------
No sockets, no clocks, no packet-id bookkeeping, no QoS 2 (the bridge subscribes
and publishes at QoS 0/1 only; a QoS 2 PUBLISH from the server is a violation), no
AUTH exchange, no topic aliases (we never announce a Topic Alias Maximum, so a
server may not use them).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from broker.errors import LinkBroken

__all__ = [
    "MQTT5",
    "MQTT311",
    "ConnAck",
    "Disconnect",
    "Parser",
    "PingResp",
    "ProtocolViolation",
    "PubAck",
    "Publish",
    "SubAck",
    "Will",
    "encode_connect",
    "encode_disconnect",
    "encode_pingreq",
    "encode_puback",
    "encode_publish",
    "encode_publishes",
    "encode_subscribe",
]

MQTT311 = 4
MQTT5 = 5

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
MAX_REMAINING = 268_435_455  # the largest remaining length four varint bytes can say

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class ProtocolViolation(LinkBroken):
    """The peer sent something MQTT does not allow; the connection must be dropped."""


# ---- properties (MQTT 5) ---------------------------------------------------------------------
# id -> kind: b byte, h two-byte int, i four-byte int, v varint, s UTF-8 string,
# d binary data, p UTF-8 string pair.
_PROPS: dict[int, str] = {
    0x01: "b",
    0x02: "i",
    0x03: "s",
    0x08: "s",
    0x09: "d",
    0x0B: "v",
    0x11: "i",
    0x12: "s",
    0x13: "h",
    0x15: "s",
    0x16: "d",
    0x17: "b",
    0x18: "i",
    0x19: "b",
    0x1A: "s",
    0x1C: "s",
    0x1F: "s",
    0x21: "h",
    0x22: "h",
    0x23: "h",
    0x24: "b",
    0x25: "b",
    0x26: "p",
    0x27: "i",
    0x28: "b",
    0x29: "b",
    0x2A: "b",
}
SESSION_EXPIRY = 0x11
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27

Properties = dict[int, object]  # user properties (0x26) as a list of (key, value) pairs


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining length, property lengths)."""
    if n < 0 or n > MAX_REMAINING:
        raise ValueError(f"cannot encode {n} as a variable byte integer")
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    if len(b) > 0xFFFF:
        raise ValueError("string longer than 65,535 bytes")
    return _U16.pack(len(b)) + b


def _binary(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        raise ValueError("binary field longer than 65,535 bytes")
    return _U16.pack(len(b)) + b


def _user_props(pairs: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(b"\x26" + _utf8(k) + _utf8(v) for k, v in pairs)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


# ---- encoders (what a bridge sends) ----------------------------------------------------------
@dataclass(frozen=True)
class Will:
    """The last will: published by the server if the connection dies without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def encode_connect(
    client_id: str,
    *,
    version: int = MQTT311,
    clean: bool = False,
    keepalive: int = 30,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
    session_expiry: int | None = None,
) -> bytes:
    """CONNECT. ``session_expiry`` (MQTT 5 only) keeps the session after a disconnect."""
    if version not in (MQTT311, MQTT5):
        raise ValueError("version must be 4 (3.1.1) or 5")
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    var = _utf8("MQTT") + bytes((version, flags)) + _U16.pack(keepalive)
    if version == MQTT5:
        props = b"" if session_expiry is None else b"\x11" + _U32.pack(session_expiry)
        var += varint(len(props)) + props
    payload = _utf8(client_id)
    if will is not None:
        if version == MQTT5:
            payload += b"\x00"  # no will properties
        payload += _utf8(will.topic) + _binary(will.payload)
    if username is not None:
        payload += _utf8(username)
    if password is not None:
        payload += _binary(password.encode())
    return _packet(CONNECT << 4, var + payload)


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    packet_id: int = 0,
    dup: bool = False,
    version: int = MQTT311,
    user_properties: Sequence[tuple[str, str]] = (),
) -> bytes:
    """One PUBLISH. ``packet_id`` is required (1..65535) for QoS 1."""
    if qos not in (0, 1):
        raise ValueError("the bridge publishes at QoS 0 or 1")
    if qos and not 0 < packet_id <= 0xFFFF:
        raise ValueError("QoS 1 needs a packet id in 1..65535")
    body = _utf8(topic) + (_U16.pack(packet_id) if qos else b"")
    if version == MQTT5:
        props = _user_props(user_properties)
        body += varint(len(props)) + props
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return _packet(first, body + payload)


def encode_publishes(
    items: Iterable[tuple[str, bytes, int, bool, int, str | None]],
    *,
    version: int = MQTT311,
    id_key: str = "edgemq-id",
) -> bytes:
    """A batch of PUBLISH packets as one ``bytes`` (the uplink's hot path).

    Each item is ``(topic, payload, qos, retain, packet_id, message_id)``; over MQTT 5 a
    ``message_id`` goes out as the user property ``id_key``.
    """
    out: list[bytes] = []
    append = out.append
    topics: dict[str, bytes] = {}
    pack16 = _U16.pack
    v5 = version == MQTT5
    key = _utf8(id_key) if v5 else b""
    for topic, payload, qos, retain, packet_id, message_id in items:
        t = topics.get(topic)
        if t is None:
            t = topics[topic] = _utf8(topic)
        head = t + pack16(packet_id) if qos else t
        if v5:
            if message_id is None:
                head += b"\x00"
            else:
                mid = message_id.encode()
                plen = 3 + len(key) + len(mid)  # 0x26, key (with its length), 2-byte length, value
                head += varint(plen) + b"\x26" + key + pack16(len(mid)) + mid
        n = len(head) + len(payload)
        first = 0x30 | (qos << 1) | (1 if retain else 0)
        if n < 128:
            append(bytes((first, n)))
        else:
            append(bytes((first,)) + varint(n))
        append(head)
        append(payload)
    return b"".join(out)


def encode_puback(packet_id: int, *, version: int = MQTT311, reason: int = 0) -> bytes:
    """PUBACK (the bridge acknowledges a QoS 1 command from the cloud)."""
    if version == MQTT5 and reason:
        return bytes((PUBACK << 4, 3)) + _U16.pack(packet_id) + bytes((reason,))
    return bytes((PUBACK << 4, 2)) + _U16.pack(packet_id)


def encode_subscribe(packet_id: int, filters: Sequence[tuple[str, int]], *, version: int = MQTT311) -> bytes:
    """SUBSCRIBE to ``(filter, qos)`` pairs (QoS 0 or 1)."""
    if not filters:
        raise ValueError("SUBSCRIBE needs at least one filter")
    body = _U16.pack(packet_id) + (b"\x00" if version == MQTT5 else b"")
    for topic_filter, qos in filters:
        if qos not in (0, 1):
            raise ValueError("the bridge subscribes at QoS 0 or 1")
        body += _utf8(topic_filter) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_pingreq() -> bytes:
    """PINGREQ."""
    return b"\xc0\x00"


def encode_disconnect(*, version: int = MQTT311, reason: int = 0) -> bytes:
    """DISCONNECT (reason 0x04 over MQTT 5 asks the server to publish the will anyway)."""
    if version == MQTT5 and reason:
        return bytes((DISCONNECT << 4, 1, reason))
    return b"\xe0\x00"


# ---- decoded packets (what a bridge receives) --------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConnAck:
    """CONNACK: ``code`` 0 means accepted (3.1.1 return code or MQTT 5 reason code)."""

    session_present: bool
    code: int
    properties: Properties = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PubAck:
    """PUBACK: ``reason`` >= 0x80 is a refusal (MQTT 5 only; always 0 over 3.1.1)."""

    packet_id: int
    reason: int = 0


@dataclass(frozen=True, slots=True)
class Publish:
    """A PUBLISH from the server (a downlink command)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    properties: Properties = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubAck:
    """SUBACK: one return/reason code per filter (>= 0x80: refused)."""

    packet_id: int
    codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PingResp:
    """PINGRESP."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A DISCONNECT from the server (MQTT 5): why it is closing the connection."""

    reason: int
    properties: Properties = field(default_factory=dict)


Packet = ConnAck | PubAck | Publish | SubAck | PingResp | Disconnect


class Parser:
    """Incremental decoder of server-to-client packets; :meth:`feed` returns whole packets."""

    def __init__(self, *, version: int = MQTT311, max_packet: int = 16 * 1024 * 1024) -> None:
        self.version = version
        self.max_packet = max_packet
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        """Add bytes; return every packet now complete, in order. Raises ProtocolViolation."""
        buf = self._buf
        buf += data
        out: list[Packet] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first = buf[pos]
            # Remaining length: 1-4 bytes, 7 bits each.
            n = mult = 0
            i = pos + 1
            complete = False
            while i < end:
                byte = buf[i]
                i += 1
                n |= (byte & 0x7F) << mult
                if not byte & 0x80:
                    complete = True
                    break
                mult += 7
                if mult > 21:
                    raise ProtocolViolation("malformed remaining length (more than 4 bytes)")
            if not complete:
                break  # the length itself is incomplete
            if n > self.max_packet:
                raise ProtocolViolation(f"packet of {n} bytes exceeds the limit of {self.max_packet}")
            if end - i < n:
                break
            out.append(self._decode(first, bytes(buf[i : i + n])))
            pos = i + n
        del buf[:pos]
        return out

    # ---- one packet ---------------------------------------------------------------------------
    def _decode(self, first: int, body: bytes) -> Packet:
        kind, flags = first >> 4, first & 0x0F
        if kind == PUBACK:
            return self._puback(flags, body)
        if kind == PUBLISH:
            return self._publish(flags, body)
        if flags:
            raise ProtocolViolation(f"reserved flags {flags:#x} set on packet type {kind}")
        if kind == CONNACK:
            return self._connack(body)
        if kind == SUBACK:
            return self._suback(body)
        if kind == PINGRESP:
            if body:
                raise ProtocolViolation("PINGRESP with a body")
            return PingResp()
        if kind == DISCONNECT and self.version == MQTT5:
            if not body:
                return Disconnect(0)
            props, _ = self._props(body, 1) if len(body) > 1 else ({}, 1)
            return Disconnect(body[0], props)
        raise ProtocolViolation(f"unexpected packet type {kind} from the server")

    def _puback(self, flags: int, body: bytes) -> PubAck:
        if flags:
            raise ProtocolViolation(f"reserved flags {flags:#x} set on PUBACK")
        if len(body) < 2 or (self.version != MQTT5 and len(body) != 2):
            raise ProtocolViolation(f"PUBACK of {len(body)} bytes")
        pid = (body[0] << 8) | body[1]
        if pid == 0:
            raise ProtocolViolation("PUBACK with packet id 0")
        if len(body) == 2:
            return PubAck(pid)
        if len(body) > 3:
            self._props(body, 3)  # validated, then not needed (reason string at most)
        return PubAck(pid, body[2])

    def _publish(self, flags: int, body: bytes) -> Publish:
        qos = (flags >> 1) & 0x03
        if qos > 1:
            raise ProtocolViolation(f"PUBLISH at QoS {qos}: the bridge subscribes at QoS 0 or 1")
        topic, pos = _read_str(body, 0)
        pid = 0
        if qos:
            if len(body) < pos + 2:
                raise ProtocolViolation("PUBLISH without its packet id")
            pid = (body[pos] << 8) | body[pos + 1]
            if pid == 0:
                raise ProtocolViolation("PUBLISH with packet id 0")
            pos += 2
        props: Properties = {}
        if self.version == MQTT5:
            props, pos = self._props(body, pos)
            if TOPIC_ALIAS in props:
                raise ProtocolViolation("topic alias used, but the bridge allows none")
        if not topic or "+" in topic or "#" in topic:
            raise ProtocolViolation(f"PUBLISH to an invalid topic {topic!r}")
        return Publish(topic, body[pos:], qos, bool(flags & 1), bool(flags & 8), pid, props)

    def _connack(self, body: bytes) -> ConnAck:
        if len(body) < 2 or (self.version != MQTT5 and len(body) != 2):
            raise ProtocolViolation(f"CONNACK of {len(body)} bytes")
        if body[0] & 0xFE:
            raise ProtocolViolation("reserved CONNACK flags set")
        props: Properties = {}
        if self.version == MQTT5 and len(body) > 2:
            props, _ = self._props(body, 2)
        return ConnAck(bool(body[0] & 1), body[1], props)

    def _suback(self, body: bytes) -> SubAck:
        if len(body) < 3:
            raise ProtocolViolation(f"SUBACK of {len(body)} bytes")
        pid = (body[0] << 8) | body[1]
        pos = 2
        if self.version == MQTT5:
            _, pos = self._props(body, 2)
        if pos >= len(body):
            raise ProtocolViolation("SUBACK without return codes")
        return SubAck(pid, tuple(body[pos:]))

    def _props(self, body: bytes, pos: int) -> tuple[Properties, int]:
        """Decode a property block starting at ``pos``; returns it and the position after it."""
        length, pos = _read_varint(body, pos)
        end = pos + length
        if end > len(body):
            raise ProtocolViolation("properties run past the end of the packet")
        props: Properties = {}
        while pos < end:
            pid, pos = _read_varint(body, pos)
            kind = _PROPS.get(pid)
            value: object
            if kind is None:
                raise ProtocolViolation(f"unknown property {pid:#x}")
            if kind == "b":
                value, pos = _need(body, pos, 1, end)[pos], pos + 1
            elif kind == "h":
                value, pos = _U16.unpack_from(_need(body, pos, 2, end), pos)[0], pos + 2
            elif kind == "i":
                value, pos = _U32.unpack_from(_need(body, pos, 4, end), pos)[0], pos + 4
            elif kind == "v":
                value, pos = _read_varint(body, pos)
            elif kind == "s":
                value, pos = _read_str(body, pos, end)
            elif kind == "d":
                size = _U16.unpack_from(_need(body, pos, 2, end), pos)[0]
                value, pos = bytes(_need(body, pos + 2, size, end)[pos + 2 : pos + 2 + size]), pos + 2 + size
            else:  # "p": user property, may repeat
                k, pos = _read_str(body, pos, end)
                v, pos = _read_str(body, pos, end)
                pairs = props.setdefault(USER_PROPERTY, [])
                assert isinstance(pairs, list)
                pairs.append((k, v))
                continue
            if pid in props:
                raise ProtocolViolation(f"property {pid:#x} given twice")
            props[pid] = value
        if pos != end:
            raise ProtocolViolation("a property runs past its block")
        return props, pos


def _need(body: bytes, pos: int, size: int, end: int) -> bytes:
    if pos + size > end:
        raise ProtocolViolation("field runs past the end of the packet")
    return body


def _read_varint(body: bytes, pos: int) -> tuple[int, int]:
    n = mult = 0
    for _ in range(4):
        if pos >= len(body):
            raise ProtocolViolation("variable byte integer runs past the end of the packet")
        byte = body[pos]
        pos += 1
        n += (byte & 0x7F) << mult
        if not byte & 0x80:
            return n, pos
        mult += 7
    raise ProtocolViolation("malformed variable byte integer (more than 4 bytes)")


def _read_str(body: bytes, pos: int, end: int | None = None) -> tuple[str, int]:
    limit = len(body) if end is None else end
    if pos + 2 > limit:
        raise ProtocolViolation("string length runs past the end of the packet")
    size = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if pos + size > limit:
        raise ProtocolViolation("string runs past the end of the packet")
    try:
        text = body[pos : pos + size].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("string is not valid UTF-8") from exc
    if "\x00" in text:
        raise ProtocolViolation("string contains U+0000")
    return text, pos + size
