"""MQTT 3.1.1 rules for the packets a client sends to a broker: bytes in, verdict out.

How it works: ``broker.guard`` frames each packet (first byte, remaining length, body)
and asks this module. ``check_first_byte`` judges the packet type and flags as soon as
the first byte arrives (a stream of zero bytes is refused after one byte);
``check_length`` judges the remaining length before the body is read (oversized packets
are refused unread); ``check_packet`` judges the whole body. Each returns ``None`` for a
well-formed packet or a ``Violation`` naming the spec rule. ``parse_connect`` pulls what
the guard needs out of a CONNECT (protocol, keep-alive).

What it does not do: sockets, clocks, logging, sessions, access control; anything amqtt
answers correctly itself (a CONNACK refusal for a bad client id, a SUBACK 0x80 for a
forbidden filter) is left to amqtt.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectInfo",
    "Violation",
    "check_first_byte",
    "check_length",
    "check_packet",
    "parse_connect",
]

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# Packets only a server sends: a client sending one breaks the protocol.
_SERVER_ONLY = {CONNACK: "CONNACK", SUBACK: "SUBACK", UNSUBACK: "UNSUBACK", PINGRESP: "PINGRESP"}
# Fixed-header flags each packet type must carry (PUBLISH flags are checked separately).
_FLAGS = {
    CONNECT: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0,
    SUBSCRIBE: 2, UNSUBSCRIBE: 2, PINGREQ: 0, DISCONNECT: 0,
}  # fmt: skip
_EXACT_LENGTH = {PUBACK: 2, PUBREC: 2, PUBREL: 2, PUBCOMP: 2, PINGREQ: 0, DISCONNECT: 0}


@dataclass(frozen=True)
class Violation:
    """A broken protocol rule: the connection must be closed."""

    rule: str
    reason: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.reason}"


@dataclass(frozen=True)
class ConnectInfo:
    """What the guard needs from a CONNECT packet."""

    protocol_name: str
    level: int
    keep_alive: int


class _Malformed(Exception):
    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.violation = Violation(rule, reason)


class _Cursor:
    """Reads MQTT primitive fields off a packet body; raises ``_Malformed`` past the end."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.body) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise _Malformed("MQTT-1.5", f"packet ends inside {what}")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        b = self.take(2, what)
        return (b[0] << 8) | b[1]

    def binary(self, what: str) -> bytes:
        return self.take(self.u16(what), what)

    def string(self, what: str) -> str:
        raw = self.binary(what)
        try:
            text = raw.decode("utf-8")  # rejects overlong forms and UTF-16 surrogates [MQTT-1.5.3-1]
        except UnicodeDecodeError:
            raise _Malformed("MQTT-1.5.3-1", f"{what} is not well-formed UTF-8") from None
        if "\x00" in text:
            raise _Malformed("MQTT-1.5.3-2", f"{what} contains U+0000")
        return text


def check_first_byte(byte: int, connected: bool) -> Violation | None:
    """Judge the packet type and fixed-header flags; ``connected``: a CONNECT was already seen."""
    ptype, flags = byte >> 4, byte & 0x0F
    if ptype in (0, 15):
        return Violation("MQTT-2.2.1", f"reserved packet type {ptype}")
    if not connected and ptype != CONNECT:
        return Violation("MQTT-3.1.0-1", f"first packet is type {ptype}, not CONNECT")
    if connected and ptype == CONNECT:
        return Violation("MQTT-3.1.0-2", "second CONNECT on one connection")
    if ptype in _SERVER_ONLY:
        return Violation("MQTT-2.2.1", f"client sent {_SERVER_ONLY[ptype]}, a server-only packet")
    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            return Violation("MQTT-3.3.1-4", "PUBLISH with QoS 3")
        if qos == 0 and flags & 0x08:
            return Violation("MQTT-3.3.1-2", "DUP flag set on a QoS 0 PUBLISH")
        return None
    if flags != _FLAGS[ptype]:
        return Violation("MQTT-2.2.2-2", f"reserved flags {flags:#x} on packet type {ptype}")
    return None


def check_length(byte: int, length: int, max_packet_size: int) -> Violation | None:
    """Judge the remaining length before the body is read."""
    if length > max_packet_size:
        return Violation("limit", f"packet of {length} bytes exceeds maximum packet size {max_packet_size}")
    exact = _EXACT_LENGTH.get(byte >> 4)
    if exact is not None and length != exact:
        return Violation("MQTT-2.2", f"packet type {byte >> 4} with remaining length {length}, must be {exact}")
    return None


def _check_topic(topic: str, *, is_filter: bool, max_length: int, max_levels: int) -> None:
    what = "topic filter" if is_filter else "topic name"
    if not topic:
        raise _Malformed("MQTT-4.7.3-1", f"empty {what}")
    if len(topic.encode()) > max_length:
        raise _Malformed("limit", f"{what} longer than {max_length} bytes")
    levels = topic.split("/")
    if len(levels) > max_levels:
        raise _Malformed("limit", f"{what} deeper than {max_levels} levels")
    if not is_filter:
        if "+" in topic or "#" in topic:
            raise _Malformed("MQTT-3.3.2-2", f"wildcard in {what} {topic!r}")
        return
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise _Malformed("MQTT-4.7.1-2", f"misplaced '#' in {what} {topic!r}")
        if "+" in level and level != "+":
            raise _Malformed("MQTT-4.7.1-3", f"misplaced '+' in {what} {topic!r}")


def parse_connect(body: bytes) -> ConnectInfo | Violation:
    """Protocol name, level and keep-alive of a CONNECT body, or what is wrong with it.

    Only the variable header is checked here: for a protocol level we do not speak
    (MQTT 5 sends properties next) the caller refuses with CONNACK 0x01.
    """
    cur = _Cursor(body)
    try:
        name = cur.string("protocol name")
        level = cur.u8("protocol level")
        cur.u8("connect flags")
        keep_alive = cur.u16("keep alive")
    except _Malformed as exc:
        return exc.violation
    if name not in ("MQTT", "MQIsdp"):
        return Violation("MQTT-3.1.2-1", f"protocol name {name!r}")
    return ConnectInfo(name, level, keep_alive)


def _check_connect(cur: _Cursor, max_length: int, max_levels: int) -> None:
    cur.string("protocol name")
    cur.u8("protocol level")
    flags = cur.u8("connect flags")
    cur.u16("keep alive")
    if flags & 0x01:
        raise _Malformed("MQTT-3.1.2-3", "CONNECT reserved flag is set")
    will, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 3, bool(flags & 0x20)
    if will_qos == 3:
        raise _Malformed("MQTT-3.1.2-14", "will QoS 3")
    if not will and (will_qos or will_retain):
        raise _Malformed("MQTT-3.1.2-13", "will QoS or retain set without the will flag")
    has_user, has_password = bool(flags & 0x80), bool(flags & 0x40)
    if has_password and not has_user:
        raise _Malformed("MQTT-3.1.2-22", "password flag without username flag")
    cur.string("client identifier")
    if will:
        _check_topic(cur.string("will topic"), is_filter=False, max_length=max_length, max_levels=max_levels)
        cur.binary("will message")
    if has_user:
        cur.string("user name")
    if has_password:
        cur.binary("password")


def check_packet(
    byte: int, body: bytes, *, max_topic_length: int = 65535, max_topic_levels: int = 128
) -> Violation | None:
    """Judge a whole packet (first byte already passed ``check_first_byte``)."""
    ptype, flags = byte >> 4, byte & 0x0F
    cur = _Cursor(body)
    limits = {"max_length": max_topic_length, "max_levels": max_topic_levels}
    try:
        if ptype == CONNECT:
            _check_connect(cur, max_topic_length, max_topic_levels)
            if cur.left:
                raise _Malformed("MQTT-3.1.3", f"{cur.left} stray bytes after the CONNECT payload")
        elif ptype == PUBLISH:
            _check_topic(cur.string("topic name"), is_filter=False, **limits)
            if (flags >> 1) & 3 and cur.u16("packet identifier") == 0:
                raise _Malformed("MQTT-2.3.1-1", "PUBLISH with packet identifier 0")
        elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            if cur.u16("packet identifier") == 0:
                raise _Malformed("MQTT-2.3.1-1", f"packet type {ptype} with packet identifier 0")
        elif ptype in (SUBSCRIBE, UNSUBSCRIBE):
            if cur.u16("packet identifier") == 0:
                raise _Malformed("MQTT-2.3.1-1", f"packet type {ptype} with packet identifier 0")
            if not cur.left:
                raise _Malformed("MQTT-3.8.3-3" if ptype == SUBSCRIBE else "MQTT-3.10.3-2", "no topic filter")
            while cur.left:
                _check_topic(cur.string("topic filter"), is_filter=True, **limits)
                if ptype == SUBSCRIBE:
                    options = cur.u8("requested QoS")
                    if options > 2:
                        raise _Malformed("MQTT-3.8.3-4", f"requested QoS byte {options:#x}")
    except _Malformed as exc:
        return exc.violation
    return None
