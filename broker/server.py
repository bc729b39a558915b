"""The amqtt-based broker: a narrow subclass of amqtt 0.12.1's ``Broker`` (pinned).

What we change, and why (details in docs/amqtt-notes.md):

* ``EdgeProtocolHandler.handle_publish`` hands every inbound PUBLISH whose topic an
  uplink rule takes to the ``UplinkTap`` *before* amqtt runs its QoS flow, so for
  QoS 1 the PUBACK goes to the device only after the tap returns (the bridge's tap
  returns once the message is committed to the store-and-forward buffer). Stock
  amqtt acknowledges in ``ProtocolHandler._handle_qos1_message_flow`` before any
  plugin sees the message.
* Messages injected by the bridge from the cloud (downlink) go through
  ``Broker.internal_message_broadcast`` and never through ``handle_publish``, so a
  message that came down can never be sent back up: loop-free by construction.
* Counters (messages in/out, bytes) are kept on the broker object, not through
  amqtt's per-packet plugin events, which cost a task per packet.
* MQTT 3.1.1 conformance and hostile input (issue 5; one entry per defect in
  docs/amqtt-notes.md): every TCP connection reads through ``broker.guard`` (framing,
  protocol rules, packet size, CONNECT deadline, keep-alive); ``EdgeBroker`` keeps its
  own connection count, takes sessions over cleanly, keeps anonymous persistent
  sessions, downgrades QoS, sends retained messages only for the subscription being
  made and only where access control allows, and never drops acknowledged messages
  when a publisher goes away; ``EdgeProtocolHandler`` keeps unacknowledged outgoing
  QoS 1 messages in flight until acknowledged or redelivered on reconnect.
* Authentication before any session changes (entry 14): amqtt resolves the session of a
  CONNECT (clean-session delete, persistent-session merge) and takes a connected client
  over before it authenticates; ``EdgeBroker`` authenticates the newcomer on a session of
  its own first, then asks the ownership ``admission`` hook, and only then deletes, adopts
  or takes over the session of that client id. A refused client gets CONNACK 0x05 and
  leaves every session as it was.
* ``stream_connected`` records each connection's TLS state (``broker.tls.note_connection``)
  for the auth plugin.
* amqtt's own log lines for each failed connection go through the broker's
  ``RateLimitedLog`` (entry 7), like the guard's.
* Site peering (docs/site.md) through two hook attributes the edge node sets:
  ``peers`` (``PeerHook``): a PUBLISH from a peer-link session is delivered to local
  subscribers only (never tapped, never forwarded again: one hop, loop-free); a local
  PUBLISH some peer wants is offered to it. ``presence`` (``PresenceHook``): told of
  each connection and disconnection, and asked before a will fires whether it is
  stale (the device is online at another broker since); a will that does fire goes
  to the tap and the peers like any local PUBLISH (amqtt broadcasts wills past
  ``handle_publish``, so they never reached the uplink; entry 40).

* Performance (issue 9, entries 20–24): each connection is read by our own loop
  (``broker.fastpath``) that accepts a client's PUBLISHes in order in
  ``EdgeProtocolHandler.accept_publish`` — the one place a local publish is accepted —
  and routes them directly (``broker.routing``), without amqtt's task per packet,
  delivery queue, broadcast loop and task per delivery.

Where the parts live: ``broker.handler`` (``EdgeProtocolHandler``: accepting a client's
PUBLISH, outgoing QoS 1 in flight), ``broker.hooks`` (the tap, peer and presence
protocols, ``BrokerCounters``), ``broker.persistent`` (sessions across restarts),
``broker.routing`` (synchronous access control, direct routing), ``broker.fastpath``
(the reader loop), ``broker.guard`` (framing and limits), ``broker.connection`` (what one
connection holds: ``ConnectionHandler``, the client loop ``serve_client``; entries 70–73);
this module holds
``EdgeBroker``: connections, authentication and admission, sessions, wills, retained
messages and the routed downlink.

This module holds no bridge logic: the tap is a protocol the bridge implements.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any

from amqtt.adapters import StreamWriterAdapter
from amqtt.contexts import Action
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import ApplicationMessage, Session

from broker.auth import bind_principal, principal_of
from broker.connection import ConnectionHandler, serve_client
from broker.errors import StoreError
from broker.fastpath import FastPathHandler
from broker.guard import GuardedReader, GuardStatistics
from broker.handler import EdgeProtocolHandler, publishable
from broker.hooks import BrokerCounters, PeerHook, PresenceHook, UplinkTap
from broker.limits import BrokerLimits
from broker.ownership import Decision, Verdict
from broker.persistent import PersistentSessionsBroker
from broker.ratelog import AmqttBrokerLog, RateLimitedLog
from broker.routing import Broadcast
from broker.session_lookup import AUTHENTICATED, CONNECT_FIELDS, RESOLVING, Resolving, SessionTable, resolving
from broker.session_queue import make_room
from broker.session_state import lighten
from broker.tls import note_connection
from broker.topics import matches

__all__ = [
    "BrokerCounters",
    "BrokerLimits",
    "EdgeBroker",
    "EdgeProtocolHandler",
    "PeerHook",
    "PresenceHook",
    "UplinkTap",
    "amqtt_config",
]

log = logging.getLogger(__name__)

# QoS of the PUBLISH whose delivery the current task is handling (set around amqtt's
# ``_handle_message_delivery``, read in ``_broadcast_message``): a context variable, so
# concurrent client loops never see each other's value.
_PUBLISHER_QOS: contextvars.ContextVar[int | None] = contextvars.ContextVar("publisher_qos", default=None)
# True while amqtt handles a SUBSCRIBE of the current task's client: the only time
# retained messages are due [MQTT-3.3.1-6].
_SUBSCRIBING: contextvars.ContextVar[bool] = contextvars.ContextVar("subscribing", default=False)


class EdgeBroker(PersistentSessionsBroker):
    """amqtt Broker with edgemq's hooks. Use for both edge and cloud brokers.

    ``admission``, if given, is asked once per CONNECT, after authentication, with the
    client id (typically ``broker.ownership.admit`` bound to the site's ring and the
    brokers alive): a ``Decision`` that does not admit is answered CONNACK 0x05 (not
    authorized); one that warns is logged (rate-limited). Counted in ``counters``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        tap: UplinkTap | None = None,
        limits: BrokerLimits | None = None,
        admission: Callable[[str], Decision] | None = None,
    ) -> None:
        super().__init__(config)
        self._sessions: SessionTable = SessionTable(self._sessions)
        self.tap = tap
        self.admission = admission
        self.peers: PeerHook | None = None
        self.presence: PresenceHook | None = None
        # Told the client id after each SUBSCRIBE is handled (the downlink router hands
        # queued commands over then); must not block.
        self.on_subscribed: Callable[[str], None] | None = None
        self.limits = limits if limits is not None else BrokerLimits.from_env()
        self.counters = BrokerCounters()
        self.guard_stats = GuardStatistics()
        self.ratelog = RateLimitedLog(log)
        self.logger = AmqttBrokerLog(logging.getLogger("amqtt.broker"), self.ratelog)
        self.open_connections = 0
        self.dropped_offline = 0
        # Per connected client id: done when its connection's ``_handle_client_session`` ended.
        self._loop_done: dict[str, asyncio.Future[None]] = {}

    # -- connections: guard, limit ---------------------------------------------------

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        # Replaces amqtt's adapter with the guard, and its semaphore (which waits instead of
        # refusing, and leaks a slot on some failed CONNECTs) with a count released in
        # ``finally``: whatever a client sends, its slot comes back.
        # First: the auth plugin reads the connection's TLS state (and client certificate)
        # from this task's context; without it certificate logins fail closed.
        note_connection(writer)
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        if self.open_connections >= self.limits.max_connections:
            self.ratelog.warning(
                "max-connections", "refusing %s: %d connections open (max_connections)", where, self.open_connections
            )
            writer.close()
            return
        self.open_connections += 1
        try:
            guard = GuardedReader(reader, writer, self.limits, self.ratelog, self.guard_stats, where)
            await self._client_connected(listener_name, guard, StreamWriterAdapter(writer))
        except Exception as exc:  # a client must never take the broker down
            self.ratelog.warning("client-error", "connection from %s ended with %r", where, exc)
        finally:
            self.open_connections -= 1
            if not writer.is_closing():
                writer.close()

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        # amqtt calls this from ``Broker._handle_client_session``; by then our override has
        # authenticated the newcomer (``_check_credentials``): answer with that result.
        answered = AUTHENTICATED.get()
        if answered is not None:
            AUTHENTICATED.set(None)
            return answered
        return await self._check_credentials(session, listener)

    async def _check_credentials(self, session: Session, listener: Any) -> bool:
        """Ask amqtt's auth plugins about ``session``."""
        ok = bool(await super()._authenticate(session, listener))
        # amqtt marks anonymous clients and then drops their persistent sessions a second
        # after they disconnect and never queues for them. Anonymous access is how devices
        # on a site network connect; the client id is their identity, so their sessions
        # follow MQTT's rules like everyone's.
        session.is_anonymous = False
        return ok

    # -- sessions: takeover, drain on exit, offline queue ----------------------------

    async def _take_over(self, client_id: str) -> None:
        """Close the connection currently holding ``client_id`` and wait until its loop ended."""
        session, handler = self._sessions.get(client_id, (None, None))
        if session is None or handler is None or session.transitions.state != "connected":
            return
        log.info("client %s connected again: closing its previous connection (session takeover)", client_id)
        done = self._loop_done.get(client_id)
        # Abort the old transport too: a reader of the old connection can be left waiting on
        # its socket (seen under load: its loop then never ends and the newcomer waits).
        transport = getattr(getattr(handler.writer, "_writer", None), "transport", None)
        if transport is not None:
            transport.abort()
        await handler.handle_connection_closed()
        if done is not None:
            try:
                await asyncio.wait_for(asyncio.shield(done), 10)
            except TimeoutError:
                log.warning("previous connection of %s did not end within 10s", client_id)

    async def _delete_session(self, client_id: str) -> None:
        if resolving():
            # amqtt's clean-session delete in ``_initialize_client_session``, before the
            # newcomer is authenticated: not now. ``_resolve_session`` deletes once it is.
            return
        # amqtt drops the old session but leaves its connection open and running; close it
        # first [MQTT-3.1.4-2].
        await self._take_over(client_id)
        await super()._delete_session(client_id)  # and forgets its stored subscriptions

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        # amqtt reads the CONNECT here and resolves its session before authentication. With
        # the flag set it sees no existing session and defers the delete: the session it
        # returns is always the newcomer's own.
        flag = Resolving()
        token = RESOLVING.set(flag)
        try:
            result: tuple[BrokerProtocolHandler, Session] = await super()._initialize_client_session(
                reader, writer, remote_address, remote_port
            )
            return result
        finally:
            flag.active = False
            RESOLVING.reset(token)

    def _admit(self, client_id: str) -> bool:
        """Ask the ``admission`` hook; count and log its decision. True: admitted."""
        if self.admission is None:
            return True
        try:
            decision = self.admission(client_id)
        except Exception as exc:
            # Ownership decides placement, not access (authentication already passed): a
            # broken policy must not lock a site's devices out.
            self.ratelog.warning("admission-error", "admission check for %s failed, admitted: %r", client_id, exc)
            return True
        counters = self.counters
        if decision.verdict is Verdict.OWNED:
            counters.admission_owned += 1
        if not decision.admit:
            counters.admission_refused += 1
        elif decision.warn:
            counters.admission_warned += 1
        if decision.warn:
            self.ratelog.warning(
                f"admission:{decision.verdict}",
                "client %s %s: %s",
                client_id,
                "admitted" if decision.admit else "refused",
                decision.reason,
            )
        return decision.admit

    async def _refuse(self, session: Session, handler: BrokerProtocolHandler, reader: Any, writer: Any) -> None:
        """CONNACK 0x05 (not authorized, session present 0) and close; no session is touched."""
        handler.attach(session, reader, writer)  # the newcomer's own session, registered nowhere
        try:
            await handler.mqtt_connack_authorize(False)
        finally:
            await writer.close()

    async def _resolve_session(self, incoming: Session) -> Session:
        """The session an authenticated, admitted CONNECT continues: what amqtt would have resolved.

        Clean session: the old one is taken over and deleted, the newcomer's is used. Persistent:
        an existing session is resumed with the newcomer's will, keep-alive and credentials,
        after a connection still holding it is closed (with its own will, not the newcomer's).
        """
        client_id = incoming.client_id
        if incoming.clean_session:
            await self._delete_session(client_id)
            return incoming
        existing = self._sessions.get(client_id)
        if existing is not None and existing[0].transitions.is_connected():
            await self._take_over(client_id)
            existing = self._sessions.get(client_id)
        if existing is None:
            return incoming
        session = existing[0]
        for name in CONNECT_FIELDS:
            setattr(session, name, getattr(incoming, name))
        principal = principal_of(incoming)
        if principal is not None:
            bind_principal(session, principal)
        session.is_anonymous = incoming.is_anonymous
        session.parent = 1
        return session

    async def _handle_client_session(
        self,
        reader: Any,
        writer: Any,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Any,
        listener_name: str,
    ) -> None:
        # ``client_session`` is the newcomer's own (``_initialize_client_session``). amqtt
        # would take a connected client over here and authenticate after; we authenticate
        # and admit first, and only then touch the session of that client id.
        listener = self.listeners_config[listener_name]
        if not await self._check_credentials(client_session, listener) or not self._admit(client_session.client_id):
            await self._refuse(client_session, handler, reader, writer)
            return
        client_session = await self._resolve_session(client_session)
        lighten(client_session)  # a 16 KB transitions.Machine per session is replaced (entry 17)
        # amqtt builds the handler in ``BrokerProtocolHandler.init_from_connect`` (a fixed
        # class) and attaches it here; swap in ours before it is attached.
        ours = ConnectionHandler(self.plugins_manager, self, loop=self._loop)
        # amqtt's own handler is not used again, but its caller (``Broker._client_connected``)
        # holds it for the life of the connection: drop its queues and events (entry 17).
        handler.__dict__.clear()
        if client_session.transitions.is_connected():
            # Persistent session still held by an open connection: amqtt would reply
            # "session present", and the old connection's late exit would then mark the
            # shared session disconnected. Close the old one first.
            await self._take_over(client_session.client_id)
        done: asyncio.Future[None] = self._loop.create_future()
        client_id = client_session.client_id
        self._loop_done[client_id] = done
        token = AUTHENTICATED.set(True)
        presence = self.presence
        if presence is not None:
            presence.connected(client_id)
        try:
            await super()._handle_client_session(reader, writer, client_session, ours, server, listener_name)
        finally:
            if presence is not None:
                presence.disconnected(client_id)
            AUTHENTICATED.reset(token)
            if not done.done():
                done.set_result(None)
            if self._loop_done.get(client_id) is done:
                del self._loop_done[client_id]

    async def _handle_disconnect(
        self, client_session: Session, handler: BrokerProtocolHandler, disconnect_waiter: asyncio.Future[Any]
    ) -> None:
        # amqtt fires the will here (``Broker._handle_disconnect``) by broadcasting it: past
        # ``handle_publish``, so past the tap and the peers. Ask the presence hook first
        # (a stale will is not fired), then hand a fired will on like a local PUBLISH.
        fires = (
            client_session.will_flag
            and client_session.will_topic is not None
            and not disconnect_waiter.cancelled()
            and disconnect_waiter.exception() is None
            and not isinstance(disconnect_waiter.result(), DisconnectPacket)
        )
        if fires and self.presence is not None and self.presence.suppress_will(client_session.client_id):
            client_session.will_flag = False  # the next CONNECT brings its own will
            self.counters.wills_suppressed += 1
            fires = False
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        peer_link = self.peers is not None and self.peers.origin(client_session.client_id) is not None
        if fires and not peer_link and (self.tap is not None or self.peers is not None):
            await self._hand_on_will(client_session)

    async def _hand_on_will(self, session: Session) -> None:
        """Offer a fired will to the tap and the peers, as if the client had published it."""
        topic = str(session.will_topic)
        payload = bytes(session.will_message or b"")
        qos, retain = int(session.will_qos or 0), bool(session.will_retain)
        if not publishable(topic) or not await self.may_publish(session, topic):
            return
        if self.tap is not None and self.tap.wants(topic):
            self.counters.uplink_offered += 1
            try:
                await self.tap.offer(topic, payload, qos, retain, session.client_id)
            except StoreError as exc:
                self.counters.uplink_refused += 1
                self.ratelog.warning("refused", "uplink buffer refused the will of %s: %s", session.client_id, exc)
        if self.peers is not None and self.peers.wants(topic):
            self.peers.forward(topic, payload, qos, retain)

    async def _client_message_loop(self, client_session: Session, handler: BrokerProtocolHandler) -> None:
        # amqtt's loop keeps four waiter tasks per connection; ours waits in this task (entry 71).
        if isinstance(handler, ConnectionHandler):
            await serve_client(self, client_session, handler)
        else:
            await super()._client_message_loop(client_session, handler)
        # amqtt's loop ends at disconnect, leaving PUBLISHes that were already received
        # (and for QoS 1 acknowledged) in the session's queue, which is cleared with the
        # session. Deliver them: acknowledged means accepted.
        queue = client_session.delivered_message_queue
        left: list[ApplicationMessage] = []
        while not queue.empty():
            left.append(queue.get_nowait())
        if left:
            log.debug("delivering %d message(s) received from %s before it went", len(left), client_session.client_id)
        for message in left:
            done: asyncio.Future[Any] = self._loop.create_future()
            done.set_result(message)
            await self._handle_message_delivery(client_session, handler, done)
        if isinstance(handler, ConnectionHandler):
            handler.release()  # the session may outlive its connection by days (entry 73)

    async def _retain_broadcast_message(self, broadcast: dict[str, Any], qos: int, target_session: Session) -> None:
        # Bounded offline queue per persistent session (count and bytes): the oldest goes first.
        data = broadcast.get("data")
        room = make_room(target_session, len(data) if data is not None else 0, self.limits)
        if room.dropped or not room.fits:
            lost = room.dropped + (0 if room.fits else 1)
            self.dropped_offline += lost
            self.counters.dropped_out += lost
            self.ratelog.warning(
                f"offline-full:{target_session.client_id}",
                "offline queue of %s full (%d messages, %d bytes): dropping its oldest message",
                target_session.client_id,
                self.limits.max_queued_messages,
                self.limits.max_queued_bytes,
            )
        if room.fits:
            await super()._retain_broadcast_message(broadcast, qos, target_session)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # Messages queued while the session was offline. amqtt sends them with RETAIN set
        # (they are not retained messages [MQTT-3.3.1-9]) and waits for every ack before
        # the client's loop starts. Ours: in order, RETAIN 0, not waited for.
        handler = self._get_handler(session)
        if isinstance(handler, FastPathHandler):
            handler.pump()  # within the in-flight window; the rest as PUBACKs come
            return
        queue = session.retained_messages
        while handler is not None and not queue.empty():
            message = queue.get_nowait()
            self.track(asyncio.ensure_future(handler.mqtt_publish(message.topic, message.data, message.qos, False)))

    # -- message routing: QoS downgrade, retained messages ---------------------------

    async def _handle_message_delivery(
        self, client_session: Session, handler: BrokerProtocolHandler, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        token = _PUBLISHER_QOS.set(getattr(message, "qos", None))
        try:
            return bool(await super()._handle_message_delivery(client_session, handler, wait_deliver))
        finally:
            _PUBLISHER_QOS.reset(token)

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        publisher_qos = force_qos if force_qos is not None else _PUBLISHER_QOS.get()
        broadcast = Broadcast(session=session, topic=topic, data=data)
        if publisher_qos is not None:
            broadcast["publisher_qos"] = publisher_qos
        await self._broadcast_queue.put(broadcast)

    async def _handle_subscription(
        self, client_session: Session, handler: BrokerProtocolHandler, subscribe_waiter: asyncio.Future[Any]
    ) -> None:
        token = _SUBSCRIBING.set(True)
        try:
            await super()._handle_subscription(client_session, handler, subscribe_waiter)
        finally:
            _SUBSCRIBING.reset(token)
        if self.on_subscribed is not None:
            self.on_subscribed(client_session.client_id)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt also calls this on every connect for *every* client's subscription filters
        # (so a client that never subscribed receives retained messages), and never asks
        # access control whether the client may receive the topic. Retained messages are
        # due only for the subscription being made [MQTT-3.3.1-6], and only where allowed.
        if not _SUBSCRIBING.get():
            return
        topic_filter, qos = subscription
        handler = self._get_handler(session)
        if handler is None:
            return
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            deliver_qos = min(qos, retained.qos if retained.qos is not None else qos)
            self.track(asyncio.ensure_future(handler.mqtt_publish(topic, retained.data, deliver_qos, True)))

    async def may_publish(self, session: Session, topic: str) -> bool:
        """Access control for publishing, through amqtt's topic plugins."""
        return bool(await self._topic_filtering(session, topic=topic, action=Action.PUBLISH))

    async def inject(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """Deliver a message from the bridge (downlink) to local subscribers; never goes back up."""
        await self.internal_message_broadcast(topic, payload, qos)
        if retain:
            await self.retain_message(None, topic, payload, qos)

    def connected_clients(self) -> int:
        """Clients connected right now."""
        return sum(1 for session, _ in self.sessions.values() if session.transitions.state == "connected")

    def client_ids(self) -> list[str]:
        """Client ids connected right now."""
        return [cid for cid, (session, _) in self.sessions.items() if session.transitions.state == "connected"]

    def is_connected(self, client_id: str) -> bool:
        entry = self._sessions.get(client_id)
        return entry is not None and entry[0].transitions.state == "connected"

    # -- routed downlink (bridge.downlink) --------------------------------------------

    def listeners_of(self, topic: str) -> list[tuple[str, str]]:
        """(client id, filter) of every *connected* session subscribed to a filter matching ``topic``."""
        return [
            (session.client_id, f)
            for f, subs in self._subscriptions.items()
            if matches(f, topic)
            for session, _ in subs
            if session.transitions.state == "connected"
        ]

    async def send_to(self, topic: str, payload: bytes, qos: int, client_ids: set[str]) -> int:
        """Send a message to exactly these connected clients, if subscribed and allowed; return how many.

        Unlike ``inject`` nothing is queued for offline sessions and nothing is retained: the
        command queue (``bridge.commands``) keeps what an offline device must still get. Each
        client gets it once, at the highest QoS its matching subscriptions grant (capped by
        ``qos``); the send runs as a task like amqtt's own deliveries.
        """
        granted: dict[str, int] = {}
        for f, subs in self._subscriptions.items():
            if not matches(f, topic):
                continue
            for session, sub_qos in subs:
                cid = session.client_id
                if cid in client_ids and session.transitions.state == "connected":
                    granted[cid] = max(granted.get(cid, 0), min(qos, sub_qos))
        sent = 0
        for cid, q in granted.items():
            session, handler = self._sessions.get(cid, (None, None))
            if session is None or handler is None:
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            self.track(asyncio.create_task(handler.mqtt_publish(topic, payload, q, False), name=f"send-{cid}"))
            sent += 1
        return sent


def amqtt_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's config dict for one TCP listener with anonymous access and no chatty plugins.

    The connection limit is ``BrokerLimits.max_connections``, enforced by ``EdgeBroker``
    (amqtt's own ``max_connections`` waits instead of refusing and can leak slots).
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def wait_forever() -> None:
    """Park the current task until cancelled."""
    await asyncio.Event().wait()
