"""The connection guard: what amqtt reads from a TCP client passes through here first.

``GuardedReader`` is an amqtt ``ReaderAdapter`` around the connection's
``asyncio.StreamReader``. It frames each MQTT packet itself and hands amqtt only whole
packets that ``broker.mqtt_rules`` accepts. It enforces, per connection:

* time allowed before CONNECT (``connect_timeout_s``);
* keep-alive: silence longer than ``keepalive_factor`` × the CONNECT's keep-alive;
* maximum packet size: judged on the remaining length, before the body is read;
* protocol rules: a violation closes the connection at once (amqtt then sees
  end-of-stream and publishes the will, as for any abnormal close);
* protocol level: a CONNECT for a level amqtt does not speak (MQTT 5) gets
  CONNACK 0x01 (unacceptable protocol version) and the connection is closed.

amqtt reads with ``asyncio.wait_for`` and cancels reads on its own timers, so every
partial state (a header being assembled) lives on the object: a cancelled read
never loses bytes. Bad input is logged through a rate-limited log.
"""

from __future__ import annotations

import asyncio
import logging
import time

from amqtt.adapters import ReaderAdapter

from broker.limits import BrokerLimits
from broker.mqtt_rules import (
    CONNECT,
    ConnectInfo,
    Violation,
    check_first_byte,
    check_length,
    check_packet,
    parse_connect,
)
from broker.ratelog import RateLimitedLog

__all__ = ["CONNACK_UNACCEPTABLE_PROTOCOL", "GuardStatistics", "GuardedReader"]

log = logging.getLogger(__name__)

CONNACK_UNACCEPTABLE_PROTOCOL = b"\x20\x02\x00\x01"
_SUPPORTED_LEVEL = 4


class GuardStatistics:
    """Counters shared by all guards of one broker (read by stats and tests)."""

    def __init__(self) -> None:
        self.violations = 0
        self.oversized = 0
        self.keepalive_expired = 0
        self.connect_timeouts = 0
        self.protocol_refused = 0


class _Closed(Exception):
    """The guard ended the connection; amqtt is told end-of-stream."""


class GuardedReader(ReaderAdapter):  # type: ignore[misc]  # amqtt ships no type info
    """Frames and checks client packets; amqtt reads validated bytes from it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: BrokerLimits,
        ratelog: RateLimitedLog,
        stats: GuardStatistics,
        peer: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._limits = limits
        self._ratelog = ratelog
        self._stats = stats
        self._peer = peer
        self._ready = bytearray()  # validated bytes amqtt has not read yet
        self._header = bytearray()  # fixed header being assembled (survives cancellation)
        self._connected = False
        self._keep_alive = 0
        self._last_packet = time.monotonic()
        self._closed = False

    # -- amqtt's side -------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        try:
            while not self._ready or (n > 0 and len(self._ready) < n):
                await self._next_packet()
        except _Closed:
            self._ready.clear()
            return b""
        if n < 0:
            n = len(self._ready)
        out = bytes(self._ready[:n])
        del self._ready[:n]
        return out

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    # -- framing ------------------------------------------------------------------

    def _deadline(self) -> float | None:
        if not self._connected:
            return self._last_packet + self._limits.connect_timeout_s
        if self._keep_alive > 0:
            return self._last_packet + self._keep_alive * self._limits.keepalive_factor
        return None

    async def _recv(self, n: int) -> bytes:
        deadline = self._deadline()
        try:
            if deadline is None:
                return await self._reader.readexactly(n)
            return await asyncio.wait_for(self._reader.readexactly(n), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if self._connected:
                self._stats.keepalive_expired += 1
                log.info(
                    "%s: silent for over %.1f × keep-alive %ss, closing",
                    self._peer,
                    self._limits.keepalive_factor,
                    self._keep_alive,
                )
            else:
                self._stats.connect_timeouts += 1
                self._ratelog.warning(
                    "no-connect", "%s: no CONNECT within %.0fs, closing", self._peer, self._limits.connect_timeout_s
                )
            self._close()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._close()
        raise _Closed

    def _violation(self, v: Violation) -> None:
        self._stats.violations += 1
        if v.rule == "limit":
            self._stats.oversized += 1
        self._ratelog.warning(f"violation:{v.rule}", "%s: protocol violation, closing: %s", self._peer, v)
        self._close()
        raise _Closed

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()

    async def _next_packet(self) -> None:
        if self._closed:
            raise _Closed
        while True:
            if not self._header:
                first = (await self._recv(1))[0]
                if (v := check_first_byte(first, self._connected)) is not None:
                    self._violation(v)
                self._header.append(first)
            if len(self._header) > 1 and not self._header[-1] & 0x80:
                break
            if len(self._header) == 5:
                self._violation(Violation("MQTT-2.2.3", "remaining length longer than 4 bytes"))
            self._header.append((await self._recv(1))[0])
        length = 0
        for i, b in enumerate(self._header[1:]):
            length |= (b & 0x7F) << (7 * i)
        first = self._header[0]
        if (v := check_length(first, length, self._limits.max_packet_size)) is not None:
            self._violation(v)
        body = await self._recv(length) if length else b""
        header = bytes(self._header)
        self._header.clear()
        if first >> 4 == CONNECT:
            await self._on_connect(body)
        v = check_packet(
            first, body, max_topic_length=self._limits.max_topic_length, max_topic_levels=self._limits.max_topic_levels
        )
        if v is not None:
            self._violation(v)
        self._last_packet = time.monotonic()
        self._ready += header
        self._ready += body

    async def _on_connect(self, body: bytes) -> None:
        info = parse_connect(body)
        if isinstance(info, Violation):
            self._violation(info)
        assert isinstance(info, ConnectInfo)
        if info.level != _SUPPORTED_LEVEL:
            self._stats.protocol_refused += 1
            self._ratelog.warning(
                f"level:{info.level}",
                "%s: CONNECT for protocol level %s refused (only 4, MQTT 3.1.1)",
                self._peer,
                info.level,
            )
            try:
                self._writer.write(CONNACK_UNACCEPTABLE_PROTOCOL)
                await asyncio.wait_for(self._writer.drain(), 5)
            except (TimeoutError, ConnectionError, OSError):
                pass
            self._close()
            raise _Closed
        self._connected = True
        self._keep_alive = info.keep_alive
