"""The broker's inbound fast path: one reader loop per connection, in packet order, no task per packet.

How it works. ``FastPathHandler`` replaces amqtt's ``ProtocolHandler._reader_loop`` for
connections read through ``broker.guard.GuardedReader``:

* packets come whole from the guard (``next_packet``); a QoS 0/1 PUBLISH is decoded by
  ``broker.wire`` and handed to ``accept_publish`` (``broker.server``) *in the reader*,
  so a client's messages are accepted, buffered and delivered in the order it sent
  them. amqtt starts a task per packet and routes each message through the session's
  delivery queue, the client loop, the broadcast queue and a broadcast task;
* ``accept_publish`` returns what the PUBACK must wait for (the buffer's group commit,
  or nothing); ``AckQueue`` sends the PUBACKs in PUBLISH order once their commits are
  done, all PUBACKs released in one loop turn as one write;
* a reader hands the loop on every ``FAIR_SHARE`` packets: its stream's reads do not suspend
  while data is buffered, so a flooding client would otherwise hold every other client's
  messages for as long as its buffer lasts (amqtt's reader yields at every packet through
  ``asyncio.wait_for``; ``tests/protocol/test_fairness.py``);
* local deliveries (``deliver``, QoS 0 to 2) are encoded here and written through the connection's
  ``Outbox``, which coalesces one loop turn's packets into one write; outgoing QoS 1
  messages stay in the session's ``inflight_out`` until the subscriber's PUBACK (read
  here too), so they are redelivered on reconnect like amqtt's own;
* outgoing flow control, as Mosquitto does it (docs/amqtt-notes.md, entry 60): at most
  ``max_inflight_messages`` QoS 1/2 messages unacknowledged per session; further ones
  wait in the session's queue (``retained_messages``, amqtt's offline queue, bounded
  by ``max_queued_messages``, oldest dropped and counted) and are sent as PUBACKs free
  the window (``pump``). A QoS 0 message is dropped (counted) while the connection
  has more than ``max_write_buffer`` bytes its socket has not taken: a subscriber that
  does not read costs at most the window, the queue and that buffer, and never slows
  anyone else;
* a QoS 2 PUBLISH is accepted the same way, by the spec's Method B (``broker.qos2_in``,
  docs/amqtt-notes.md entry 80): passed on at once, only its packet identifier kept until
  PUBREL, at most ``max_awaiting_rel`` per session (beyond: PUBREC, dropped, counted); its
  PUBREC and the PUBCOMP of each PUBREL go through the same ``AckQueue``;
* every other packet (SUBSCRIBE, PINGREQ, DISCONNECT, outgoing QoS 2 acknowledgements) is
  handed back to amqtt's decoder and handlers, awaited in order. So does every PUBLISH
  while an amqtt plugin listens for packet or message events, which the fast path does
  not fire (amqtt's PUBLISH runs in a task; for QoS 2 ``broker.handler`` applies Method B).

What it does not do: routing rules, access control, the buffer and counters are
``broker.server``'s; framing and protocol checks are ``broker.guard``'s. Connections
not read through the guard keep amqtt's reader loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from amqtt.broker import RetainedApplicationMessage
from amqtt.errors import AMQTTError
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.packet import PUBLISH, MQTTFixedHeader
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import OutgoingApplicationMessage

from broker.guard import GuardedReader
from broker.limits import BrokerLimits
from broker.mqtt_rules import DISCONNECT, PINGREQ, PUBACK, PUBCOMP, PUBREC, PUBREL, SUBSCRIBE, UNSUBSCRIBE
from broker.qos2_in import Verdict, awaiting_release
from broker.qos2_out import QoS2Outgoing
from broker.session_queue import make_room
from broker.wire import decode_publish, encode_puback, encode_pubcomp, encode_publish, encode_pubrec, packet_id

__all__ = ["AckQueue", "FastPathHandler", "Outbox", "SentOutgoing"]

log = logging.getLogger(__name__)

_DEFAULT_LIMITS = BrokerLimits()

FAIR_SHARE = 64
"""Packets one connection's reader handles before it lets the event loop run others. Its socket
reads do not suspend while the stream holds data (up to ~128 KiB, ~1,200 small PUBLISHes), so a
flooding client held the loop for ~30 ms a turn and every other client's messages waited that
long (overload scenario, BENCHMARKS.md §5). 64 PUBLISHes are ~2 ms of work. Counted from the
last read that emptied the stream (``GuardedReader.drained``): a client that sends in bursts
waits for the loop after each anyway, and an extra turn in the middle of a burst split its
group commit (one publisher end to end: 10.8-12.5k -> 8.5-8.7k msg/s when counted regardless)."""

MAX_PENDING_ACKS = 1000
"""PUBACKs one connection may have waiting for commits before its reader waits (backpressure)."""

FULL_WINDOW = 16
"""PUBACKs waiting on one connection at which its client has most likely sent (nearly) its whole
in-flight window and waits for them: the buffer commits at once instead of waiting out its
window. paho's and libmosquitto's default window is 20; mosquitto_pub was seen keeping 19 in
one burst and 1 behind (a release pattern of 19, 1, 19, 1 ...), so the mark is a little lower."""


class SentOutgoing(OutgoingApplicationMessage):  # type: ignore[misc]  # amqtt ships no type info
    """An outgoing message the fast path has already written once: a resend sets DUP."""

    sent = True


class Outbox:
    """Coalesces the packets one connection is sent during a loop turn into one write."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        closing: Callable[[], bool],
        unsent: Callable[[], int] = lambda: 0,
    ) -> None:
        self._write = write
        self._closing = closing
        self._unsent = unsent
        self._parts: list[bytes] = []
        self._queued = 0  # bytes in _parts
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self.writes = 0  # transport writes made (statistics, tests)

    def send(self, data: bytes) -> None:
        """Queue ``data``; written at the end of this loop turn, after everything queued before."""
        self._parts.append(data)
        self._queued += len(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now (also called before any other write to keep the order)."""
        self._scheduled = False
        if not self._parts:
            return
        data = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        self._queued = 0
        if self._closing():
            return
        self.writes += 1
        try:
            self._write(data)
        except (RuntimeError, OSError):  # closed under us (uvloop raises): the reader sees the end
            log.debug("write on a closed connection dropped (%d bytes)", len(data))

    def backlog(self) -> int:
        """Bytes queued here or in the transport that the client's socket has not taken yet."""
        return self._queued + self._unsent()


class AckQueue:
    """PUBACKs (and PUBRECs, PUBCOMPs) in packet order, each released once what it waits for is done.

    ``add(packet_id, waiting)`` queues a PUBACK, ``add_ack(packet, waiting)`` any encoded
    acknowledgement: ``waiting`` is ``None`` (acknowledge now) or a future (a buffer
    commit); a future that fails stops all further acknowledgements of the connection and
    calls ``on_error`` (the broker closes the connection: the device resends what was not
    acknowledged).
    """

    def __init__(self, outbox: Outbox, on_error: Callable[[BaseException], None]) -> None:
        self._outbox = outbox
        self._on_error = on_error
        # Created on the first PUBLISH: an empty deque is ~760 bytes, and a connection that
        # only subscribes, or idles, never needs one (idle memory, amqtt-notes 70-73).
        self._queue: collections.deque[tuple[bytes, asyncio.Future[Any] | None]] | None = None
        self._scheduled = False
        self._failed = False
        self._loop = asyncio.get_running_loop()

    def __len__(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def oldest(self) -> asyncio.Future[Any] | None:
        """What the oldest unreleased PUBACK waits for (None if nothing or nothing to wait for)."""
        return self._queue[0][1] if self._queue else None

    def add(self, pid: int, waiting: asyncio.Future[Any] | None) -> None:
        self.add_ack(encode_puback(pid), waiting)

    def add_ack(self, packet: bytes, waiting: asyncio.Future[Any] | None) -> None:
        if self._failed:
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = collections.deque()
        queue.append((packet, waiting))
        if waiting is None or waiting.done():
            if len(queue) == 1:
                self._schedule()
        else:
            waiting.add_done_callback(self._done)

    def _done(self, _: asyncio.Future[Any]) -> None:
        self._schedule()

    def _schedule(self) -> None:
        # One release per loop turn: the futures of one group commit are resolved together,
        # so their PUBACKs leave as one write.
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.release)

    def release(self) -> None:
        """Send every PUBACK at the head of the queue whose wait is over."""
        self._scheduled = False
        queue = self._queue
        if queue is None:
            return
        out: list[bytes] = []
        while queue and not self._failed:
            packet, waiting = queue[0]
            if waiting is not None:
                if not waiting.done():
                    break
                exc = waiting.exception() if not waiting.cancelled() else asyncio.CancelledError()
                if exc is not None:
                    self._failed = True
                    queue.clear()
                    self._on_error(exc)
                    break
            queue.popleft()
            out.append(packet)
        if out:
            # Written at once, not at the end of the turn: these are what the client waits
            # for, and later callbacks may go on to forward the commit's rows upstream (the
            # store wakes the uplink after this release, bridge.store._settle_and_wake).
            # Whatever was queued for the client before them leaves with them, in order.
            self._outbox.send(b"".join(out))
            self._outbox.flush()


class FastPathHandler(QoS2Outgoing):
    """amqtt's broker protocol handler with our reader loop, PUBACK queue and local delivery."""

    _outbox: Outbox | None = None
    _acks: AckQueue | None = None
    _pump_scheduled = False

    # -- implemented by broker.handler.EdgeProtocolHandler ------------------------------

    async def accept_publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, *, route: bool = True
    ) -> asyncio.Future[Any] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_window_full(self) -> None:  # pragma: no cover - overridden
        """The client has FULL_WINDOW PUBACKs waiting for the buffer."""

    def on_publish_refused(self, exc: BaseException) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def count_out(self, n_bytes: int, qos: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_invalid_topic(self, topic: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def limits(self) -> BrokerLimits:
        """The broker's limits (overridden by ``broker.server.EdgeProtocolHandler``)."""
        return _DEFAULT_LIMITS

    def on_dropped_out(self, qos: int) -> None:
        """A message for this client was dropped: QoS 0 (not reading) or the oldest queued one."""

    def on_dropped_in(self, topic: str) -> None:
        """A QoS 2 PUBLISH from this client was dropped: ``max_awaiting_rel`` are awaiting PUBREL."""

    # -- output -----------------------------------------------------------------------

    def outbox(self) -> Outbox:
        """This connection's coalescing writer (made on first use)."""
        if self._outbox is None:
            writer = self.writer
            stream = getattr(writer, "_writer", None)

            transport = getattr(stream, "transport", None)

            def closing() -> bool:
                return bool(getattr(writer, "is_closed", False)) or (stream is not None and stream.is_closing())

            def unsent() -> int:
                return int(transport.get_write_buffer_size()) if transport is not None else 0

            self._outbox = Outbox(writer.write, closing, unsent)
        return self._outbox

    async def _send_packet(self, packet: Any) -> None:
        # amqtt's own writes (CONNACK, SUBACK, retained and resent messages) go after
        # everything the fast path queued before them.
        if self._outbox is not None:
            self._outbox.flush()
        await super()._send_packet(packet)

    def deliver(self, topic: str, topic_bytes: bytes, data: bytes, qos: int) -> bool:
        """Send a PUBLISH to this connection's client now; False if it must go amqtt's way.

        QoS 0 is dropped while the client is not taking what it was sent (``max_write_buffer``);
        QoS 1 and 2 beyond the in-flight window wait in the session's bounded queue.
        """
        session = self.session
        if session is None or self.writer is None:
            return False
        limits = self.limits()
        if qos == 0:
            outbox = self.outbox()
            if outbox.backlog() > limits.max_write_buffer:
                self.on_dropped_out(0)
                return True
            outbox.send(encode_publish(topic_bytes, data, 0, None))
            self.count_out(len(data), 0)
        elif len(session.inflight_out) >= limits.max_inflight_messages or not session.retained_messages.empty():
            self._queue_out(topic, data, qos, limits)  # counted when it is sent (pump)
        else:
            self._send_in_flight(topic, topic_bytes, data, qos)
        return True

    async def mqtt_publish(
        self, topic: str, data: bytes | bytearray, qos: int | None, retain: bool, ack_timeout: int | None = None
    ) -> OutgoingApplicationMessage:
        """amqtt's deliveries (its broadcast loop, commands, resends) through the same window.

        A QoS 1/2 message to a connected client is sent or queued as ``deliver`` does and
        this returns at once (amqtt's would wait for the acknowledgement). Retained
        messages (RETAIN=1, a few per SUBSCRIBE) keep amqtt's way.
        """
        session = self.session
        if qos and not retain and session is not None and self.writer is not None and ack_timeout is None:
            payload = bytes(data)
            limits = self.limits()
            if len(session.inflight_out) >= limits.max_inflight_messages or not session.retained_messages.empty():
                self._queue_out(topic, payload, qos, limits)
            else:
                self._send_in_flight(topic, topic.encode(), payload, qos)
            return OutgoingApplicationMessage(None, topic, qos, payload, retain)
        self.count_out(len(data), qos or 0)
        message: OutgoingApplicationMessage = await super().mqtt_publish(topic, data, qos, retain, ack_timeout)
        return message

    def _send_in_flight(self, topic: str, topic_bytes: bytes, data: bytes, qos: int) -> None:
        """Send a QoS 1 or 2 message, in flight (``inflight_out``) until acknowledged."""
        session = self.session
        try:
            pid = session.next_packet_id
        except AMQTTError:
            log.warning("%s: 65535 messages in flight, dropping one on %s", session.client_id, topic)
            return
        if qos == 1:
            session.inflight_out[pid] = SentOutgoing(pid, topic, qos, data, False)
            self.outbox().send(encode_publish(topic_bytes, data, 1, pid))
        else:
            # In flight now (the window counts it), sent by the QoS 2 flow (``QoS2Outgoing``).
            message = OutgoingApplicationMessage(pid, topic, qos, data, False)
            session.inflight_out[pid] = message
            self.track_task(asyncio.ensure_future(self._handle_qos2_message_flow(message)))
        self.count_out(len(data), qos)

    def _queue_out(self, topic: str, data: bytes, qos: int, limits: BrokerLimits) -> None:
        """Queue a message behind a full window (the session's queue: kept if the client goes).

        Bounded by ``max_queued_messages`` and ``max_queued_bytes``: the oldest go first.
        """
        room = make_room(self.session, len(data), limits)
        for _ in range(room.dropped):
            self.on_dropped_out(qos)
        if not room.fits:
            self.on_dropped_out(qos)
            return
        self.session.retained_messages.put_nowait(RetainedApplicationMessage(None, topic, data, qos))

    def pump(self) -> None:
        """Send queued messages while the session's in-flight window has room, in queue order."""
        self._pump_scheduled = False
        session = self.session
        if session is None or self.writer is None:
            return
        queue = session.retained_messages
        window = self.limits().max_inflight_messages
        while not queue.empty() and len(session.inflight_out) < window:
            message = queue.get_nowait()
            topic, data, qos = message.topic, bytes(message.data or b""), message.qos or 0
            if qos:
                self._send_in_flight(topic, topic.encode(), data, qos)
            else:
                self.outbox().send(encode_publish(topic.encode(), data, 0, None))
                self.count_out(len(data), 0)

    def _pump_soon(self) -> None:
        if not self._pump_scheduled and self.session is not None and not self.session.retained_messages.empty():
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self.pump)

    # -- input ------------------------------------------------------------------------

    async def _reader_loop(self) -> None:
        guard = self.reader
        if not isinstance(guard, GuardedReader) or self.session is None or self._reader_ready is None:
            await super()._reader_loop()
            return
        self._reader_ready.set()
        acks = self._acks = AckQueue(self.outbox(), self.on_publish_refused)
        # QoS 0 appends to the buffer have no PUBACK to hold back, but the same pushback:
        # at most MAX_PENDING_ACKS of this connection's appends wait for their commit before
        # its reader waits (stops reading the socket), else they pile up in the store's memory.
        pending_qos0: collections.deque[asyncio.Future[Any]] | None = None  # made on first use
        events = self.plugins_manager._event_plugin_callbacks
        fire = MQTTEvents.PACKET_RECEIVED in events
        # A plugin that listens for messages gets them the way amqtt fires them.
        slow = fire or any(e in events for e in (BrokerEvents.MESSAGE_RECEIVED, BrokerEvents.MESSAGE_BROADCAST))
        turn = 0  # packets handled since this reader last let the loop run others
        drained = guard.drained
        try:
            while True:
                if guard.drained != drained:  # its last read emptied the stream: the next one waits
                    drained, turn = guard.drained, 0
                elif turn >= FAIR_SHARE:
                    turn = 0
                    await asyncio.sleep(0)
                turn += 1
                packet = await guard.next_packet()
                if packet is None:
                    break
                first, body = packet
                kind = first >> 4
                if kind == PUBLISH and not slow:
                    p = decode_publish(first, body)
                    if p.topic.startswith("$"):
                        # amqtt closes such a client too ([MQTT-4.7.2-1]); the guard took wildcards.
                        self.on_invalid_topic(p.topic)
                        break
                    if p.qos == 2 and p.packet_id is not None:
                        await self.receive_qos2(p.topic, p.payload, p.retain, p.packet_id, acks.add_ack)
                        if len(acks) > MAX_PENDING_ACKS and (oldest := acks.oldest()) is not None:
                            await asyncio.wait([oldest])
                        continue
                    waiting = await self.accept_publish(p.topic, p.payload, p.qos, p.retain)
                    if p.qos and p.packet_id is not None:
                        acks.add(p.packet_id, waiting)
                        if waiting is not None and len(acks) == FULL_WINDOW:
                            self.on_window_full()
                        if len(acks) > MAX_PENDING_ACKS and (oldest := acks.oldest()) is not None:
                            await asyncio.wait([oldest])
                    elif waiting is not None:
                        if pending_qos0 is None:
                            pending_qos0 = collections.deque()
                        pending_qos0.append(waiting)
                        while pending_qos0 and pending_qos0[0].done():
                            pending_qos0.popleft()
                        if len(pending_qos0) > MAX_PENDING_ACKS:
                            await asyncio.wait([pending_qos0[0]])
                elif kind == PUBACK and not fire:
                    self._on_puback(packet_id(body))
                elif kind == PUBREL and not fire:
                    acks.add_ack(self.release_qos2(packet_id(body)), None)
                else:
                    guard.push_back(first, body)
                    await self._amqtt_packet(guard, fire)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a client must never take the broker down
            log.warning("%s: reader loop ended: %r", self.session.client_id if self.session else "?", exc)
        if self._outbox is not None:
            self._outbox.flush()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    async def receive_qos2(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        pid: int,
        ack: Callable[[bytes, asyncio.Future[Any] | None], None],
        *,
        route: bool = True,
    ) -> tuple[Verdict, asyncio.Future[Any] | None]:
        """A QoS 2 PUBLISH from the client, by the spec's Method B (``broker.qos2_in``).

        A new one is accepted now (``accept_publish``) and only its identifier kept until
        PUBREL; a resend is not accepted again; one beyond ``max_awaiting_rel`` is dropped.
        Each gets a PUBREC through ``ack``, after the buffer commit for a new one. Returns
        the verdict and what that PUBREC waits for.
        """
        held = awaiting_release(self.session)
        verdict = held.receive(pid, self.limits().max_awaiting_rel)
        waiting: asyncio.Future[Any] | None = None
        if verdict is Verdict.NEW:
            try:
                waiting = await self.accept_publish(topic, payload, 2, retain, route=route)
            except BaseException:
                held.forget(pid)
                raise
            if waiting is not None:
                # Refused by the buffer: no PUBREC and the connection closes; the resend
                # after the reconnect must be taken as new.
                waiting.add_done_callback(lambda f: held.forget(pid) if f.cancelled() or f.exception() else None)
        elif verdict is Verdict.OVER_LIMIT:
            self.on_dropped_in(topic)
        ack(encode_pubrec(pid), waiting)
        return verdict, waiting

    def release_qos2(self, pid: int) -> bytes:
        """A PUBREL from the client: forget ``pid``; the PUBCOMP to send, held or not (``broker.qos2_in``)."""
        if self.session is not None:
            awaiting_release(self.session).release(pid)
        return encode_pubcomp(pid)

    def _on_puback(self, pid: int) -> None:
        waiter = self._puback_waiters.get(pid)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(PubackPacket.build(pid))
        else:
            session = self.session
            if session is not None and isinstance(session.inflight_out.get(pid), SentOutgoing):
                del session.inflight_out[pid]
        # After the waiter's flow has taken the message out of flight (scheduled first).
        self._pump_soon()

    async def _amqtt_packet(self, guard: GuardedReader, fire: bool) -> None:
        """Decode one packet with amqtt and run its handler, in order."""
        fixed = await MQTTFixedHeader.from_stream(guard)
        kind = fixed.packet_type
        if kind == PUBLISH:
            packet: Any = await PublishPacket.from_stream(guard, fixed_header=fixed)
        else:
            packet = await packet_class(fixed).from_stream(guard, fixed_header=fixed)
        if fire:
            await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=self.session)
        if kind == PUBLISH:
            # QoS 2 (and anything while a plugin listens for packets): amqtt's flow, which
            # for QoS 2 waits for the client's PUBREL, so it cannot block this loop.
            task = asyncio.ensure_future(self.handle_publish(packet))
            self.track_task(task)
        elif kind == PUBACK:
            await self.handle_puback(packet)
            self._pump_soon()
        elif kind == PUBREC:
            await self.handle_pubrec(packet)
        elif kind == PUBREL:
            await self.handle_pubrel(packet)
        elif kind == PUBCOMP:
            await self.handle_pubcomp(packet)
            self._pump_soon()
        elif kind == SUBSCRIBE:
            await self.handle_subscribe(packet)
        elif kind == UNSUBSCRIBE:
            await self.handle_unsubscribe(packet)
        elif kind == PINGREQ:
            await self.handle_pingreq(packet)
        elif kind == DISCONNECT:
            await self.handle_disconnect(packet)
        else:
            await self.handle_connect(packet)  # a second CONNECT (the guard refuses it first)

    def track_task(self, task: asyncio.Task[Any]) -> None:  # pragma: no cover - overridden
        """Keep a reference to ``task`` until it ends."""
