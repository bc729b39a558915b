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

The socket is read a chunk at a time and packets are framed in the guard's own
buffer, so a burst of packets costs one awaited read, not several per packet; the
deadlines are one timer per connection, not an ``asyncio.wait_for`` per read. amqtt
may still cancel a read on its own timers: unframed bytes stay in the buffer, so a
cancelled read never loses bytes. ``next_packet`` gives the broker's fast path
(``broker.fastpath``) whole packets without amqtt's decoding. Bad input is logged
through a rate-limited log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

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
from broker.wire import Frame, split_frame

__all__ = ["CONNACK_UNACCEPTABLE_PROTOCOL", "GuardStatistics", "GuardedReader"]

log = logging.getLogger(__name__)

CONNACK_UNACCEPTABLE_PROTOCOL = b"\x20\x02\x00\x01"
_SUPPORTED_LEVEL = 4
_CHUNK = 65536  # bytes per socket read; framing happens in our buffer


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
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()  # bytes from the socket, framed up to ``_pos``
        self._pos = 0
        self._ready = bytearray()  # validated bytes amqtt has not read yet
        self._connected = False
        self._keep_alive = 0
        self._last_packet = self._loop.time()
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        #: Socket reads that emptied the stream (shorter than a chunk): the next read waits for
        #: the loop, so the reader has let others run. ``broker.fastpath`` takes turns by it.
        self.drained = 0
        self._arm()

    # -- amqtt's side -------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        try:
            while not self._ready or (n > 0 and len(self._ready) < n):
                _, _, end = await self._frame()
                self._ready += self._buf[self._pos : end]
                self._pos = end
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

    # -- the broker's fast path -----------------------------------------------------

    async def next_packet(self) -> tuple[int, bytes] | None:
        """The next whole, validated packet as (first byte, body); None once the connection ended.

        For the broker's own reader loop (``broker.fastpath``): no amqtt packet objects and
        one awaited socket read per chunk, however many packets the chunk holds.
        """
        try:
            first, body_at, end = await self._frame()
        except _Closed:
            return None
        body = bytes(self._buf[body_at:end])
        self._pos = end
        return first, body

    def push_back(self, first: int, body: bytes) -> None:
        """Give a packet from ``next_packet`` to amqtt's decoder: its next ``read`` returns it."""
        self._ready.append(first)
        n = len(body)
        while True:
            b = n & 0x7F
            n >>= 7
            self._ready.append(b | 0x80 if n else b)
            if not n:
                break
        self._ready += body

    # -- deadlines: one timer per connection, not a ``wait_for`` per read ------------

    def _deadline(self) -> float | None:
        if not self._connected:
            return self._last_packet + self._limits.connect_timeout_s
        if self._keep_alive > 0:
            return self._last_packet + self._keep_alive * self._limits.keepalive_factor
        return None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._deadline()
        if deadline is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self._closed:
            return
        deadline = self._deadline()
        if deadline is None:
            return
        if self._loop.time() < deadline:  # a packet came meanwhile: wait for the new deadline
            self._timer = self._loop.call_at(deadline, self._on_deadline)
            return
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
        self._reader.feed_eof()  # wakes a pending read at once, whatever the transport still holds

    # -- framing ------------------------------------------------------------------

    async def _fill(self) -> None:
        """Read the next chunk from the socket (compacting what was framed already)."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        try:
            chunk = await self._reader.read(_CHUNK)
        except (ConnectionError, OSError):
            chunk = b""
        if not chunk or self._closed:
            self._close()
            raise _Closed
        if len(chunk) < _CHUNK:
            self.drained += 1
        self._buf += chunk

    def _violation(self, v: Violation) -> NoReturn:
        self._stats.violations += 1
        if v.rule == "limit":
            self._stats.oversized += 1
        self._ratelog.warning(f"violation:{v.rule}", "%s: protocol violation, closing: %s", self._peer, v)
        self._close()
        raise _Closed

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._writer.close()

    async def _frame(self) -> tuple[int, int, int]:
        """The next whole packet in ``_buf``, validated: (first byte, body start, end).

        The caller moves ``_pos`` to ``end`` once it has taken the bytes. Cancellation-safe:
        unframed bytes stay in ``_buf``.
        """
        if self._closed:
            raise _Closed
        buf = self._buf
        while True:
            pos = self._pos
            if len(buf) > pos:
                first = buf[pos]
                if (v := check_first_byte(first, self._connected)) is not None:
                    self._violation(v)
                f = split_frame(buf, pos)
                if f == -1:
                    self._violation(Violation("MQTT-2.2.3", "remaining length longer than 4 bytes"))
                if isinstance(f, Frame):
                    if (v := check_length(first, f.length, self._limits.max_packet_size)) is not None:
                        self._violation(v)
                    end = f.body_at + f.length
                    if len(buf) >= end:
                        break
            await self._fill()
            buf = self._buf
        body_at = f.body_at
        if first >> 4 == CONNECT:
            await self._on_connect(bytes(buf[body_at:end]))
        v = check_packet(
            first,
            bytes(buf[body_at:end]),
            max_topic_length=self._limits.max_topic_length,
            max_topic_levels=self._limits.max_topic_levels,
        )
        if v is not None:
            self._violation(v)
        self._last_packet = self._loop.time()
        return first, body_at, end

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
        self._last_packet = self._loop.time()
        self._arm()
