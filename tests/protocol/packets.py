"""A small raw MQTT 3.1.1 packet builder and a blocking socket client for protocol tests.

Builders return bytes exactly as a client would send them, including malformed variants
(``raw`` takes any first byte and body). ``Wire`` speaks to a broker over one TCP socket
and reads packets back as ``Packet(type, flags, body)``; ``None`` means the broker closed
the connection.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def raw(first: int, body: bytes = b"") -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(
    client_id: str | bytes,
    *,
    clean: bool = True,
    keepalive: int = 60,
    will: tuple[str, bytes, int, bool] | None = None,
    level: int = 4,
    name: str = "MQTT",
    flags_extra: int = 0,
) -> bytes:
    flags = (0x02 if clean else 0) | flags_extra
    payload = string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += string(topic) + string(message)
    # MQTT 5: session expiry interval 3600 and receive maximum 10, as real v5 clients send
    props = b"\x08\x11\x00\x00\x0e\x10\x21\x00\x0a" if level == 5 else b""
    body = string(name) + bytes([level, flags]) + struct.pack("!H", keepalive) + props + payload
    return raw(CONNECT << 4, body)


def publish(
    topic: str | bytes, payload: bytes = b"x", *, qos: int = 0, retain: bool = False, pid: int = 1, dup: bool = False
) -> bytes:
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = string(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return raw(first, body)


def puback(pid: int) -> bytes:
    return raw(PUBACK << 4, struct.pack("!H", pid))


def subscribe(pid: int, filters: list[tuple[str | bytes, int]], *, flags: int = 2) -> bytes:
    body = struct.pack("!H", pid) + b"".join(string(f) + bytes([q]) for f, q in filters)
    return raw((SUBSCRIBE << 4) | flags, body)


def unsubscribe(pid: int, filters: list[str]) -> bytes:
    return raw((UNSUBSCRIBE << 4) | 2, struct.pack("!H", pid) + b"".join(string(f) for f in filters))


def pingreq() -> bytes:
    return raw(PINGREQ << 4)


def disconnect() -> bytes:
    return raw(DISCONNECT << 4)


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 1)

    def publish_fields(self) -> tuple[str, int | None, bytes]:
        """(topic, packet id or None, payload) of a PUBLISH."""
        (n,) = struct.unpack("!H", self.body[:2])
        topic = self.body[2 : 2 + n].decode()
        rest = self.body[2 + n :]
        if self.qos:
            return topic, struct.unpack("!H", rest[:2])[0], rest[2:]
        return topic, None, rest


class Wire:
    """One raw MQTT connection (blocking socket)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self._eof = False

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), like a crashed device."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send; False if the broker has already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:
            chunk = b""
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def recv(self, timeout: float = 10.0) -> Packet | None:
        """The next packet; None when the broker closed the connection; TimeoutError if nothing came."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buf) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self._buf) and i <= 4:
                    b = self._buf[i]
                    length |= (b & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not b & 0x80:
                        if len(self._buf) >= i + length:
                            first = self._buf[0]
                            body = bytes(self._buf[i : i + length])
                            del self._buf[: i + length]
                            return Packet(first >> 4, first & 0x0F, body)
                        break
            if self._eof or not self._fill(deadline):
                return None

    def recv_type(self, ptype: int, timeout: float = 10.0) -> Packet:
        """The next packet of ``ptype``, skipping others; fails on close or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.recv(max(0.01, deadline - time.monotonic()))
            assert p is not None, f"connection closed while waiting for packet type {ptype}"
            if p.type == ptype:
                return p

    def closed_within(self, timeout: float) -> bool:
        """True if the broker closes the connection within ``timeout`` (packets are skipped)."""
        deadline = time.monotonic() + timeout
        try:
            while self.recv(max(0.01, deadline - time.monotonic())) is not None:
                pass
            return True
        except TimeoutError:
            return False

    def quiet_for(self, seconds: float) -> list[Packet]:
        """Everything that arrives in ``seconds`` (the connection staying open)."""
        got: list[Packet] = []
        deadline = time.monotonic() + seconds
        try:
            while True:
                p = self.recv(max(0.01, deadline - time.monotonic()))
                if p is None:
                    return got
                got.append(p)
        except TimeoutError:
            return got

    # -- conveniences -------------------------------------------------------------

    def connect(self, client_id: str, **kw: object) -> tuple[int, bool]:
        """CONNECT and wait for CONNACK: (return code, session present)."""
        self.send(connect(client_id, **kw))  # type: ignore[arg-type]
        p = self.recv_type(CONNACK)
        return p.body[1], bool(p.body[0] & 1)

    def subscribe(self, topic: str, qos: int = 1, pid: int = 1) -> int:
        self.send(subscribe(pid, [(topic, qos)]))
        return self.recv_type(SUBACK).body[2]

    def ping(self, timeout: float = 10.0) -> bool:
        self.send(pingreq())
        try:
            return self.recv_type(PINGRESP, timeout) is not None
        except (AssertionError, TimeoutError):
            return False
