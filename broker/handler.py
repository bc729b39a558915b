"""The broker-side protocol handler: where every PUBLISH from a client is accepted.

``EdgeProtocolHandler`` is amqtt's ``BrokerProtocolHandler`` with our fast path
(``broker.fastpath``): ``accept_publish`` is the one place a locally published
message is accepted — counted, access-checked once, offered to the uplink tap (the
PUBACK waits for the buffer commit), forwarded to the site peers that want it, and
routed to local subscribers. A PUBLISH from a peer link is delivered locally only (one
hop). It also keeps unacknowledged outgoing QoS 1 messages in flight until acknowledged
or redelivered on reconnect (amqtt-notes entry 12), and takes incoming QoS 2 by the
spec's Method B on amqtt's read path too (entries 80, 81).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

from amqtt.contexts import Action
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.session import OUTGOING, ApplicationMessage, IncomingApplicationMessage

from broker.fastpath import FastPathHandler, SentOutgoing
from broker.limits import BrokerLimits
from broker.qos2_in import Verdict

if TYPE_CHECKING:
    from broker.server import EdgeBroker

__all__ = ["EdgeProtocolHandler", "publishable"]


def publishable(topic: str) -> bool:
    """A topic name a client may publish to: no wildcards, not a $-topic."""
    return bool(topic) and "#" not in topic and "+" not in topic and not topic.startswith("$")


class EdgeProtocolHandler(FastPathHandler):
    """amqtt's broker-side protocol handler with the uplink hand-off, the fast path and counters."""

    edge_broker: EdgeBroker

    async def accept_publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, *, route: bool = True
    ) -> asyncio.Future[Any] | None:
        """Accept a PUBLISH from this handler's client: the one place every local publish passes.

        Counts it, checks access control once, offers it to the uplink tap (the buffer) and,
        with ``route``, delivers it to local subscribers and retains it. Returns what the
        client's PUBACK must wait for (the buffer commit), or None. Called in packet order
        by the fast path's reader loop; with ``route=False`` from ``handle_publish``
        (amqtt's path: QoS 2), where amqtt routes the message itself.
        """
        broker = self.edge_broker
        counters = broker.counters
        counters.messages_in += 1
        counters.messages_in_by_qos[qos] += 1
        counters.bytes_in += len(payload)
        session = self.session
        if session is None:
            return None
        allowed = broker.acl_now(session, topic, Action.PUBLISH)
        if allowed is None:
            allowed = await broker.may_publish(session, topic)
        if not allowed:
            # MQTT 3.1.1 cannot refuse a PUBLISH: QoS 1 is still acknowledged, the message is
            # dropped (counted by the ACL plugin).
            return None
        waiting: asyncio.Future[Any] | None = None
        peers = broker.peers
        origin = peers.origin(session.client_id) if peers is not None else None
        if peers is not None and origin is not None:
            # Forwarded by a peer: local subscribers only (never tapped, never forwarded: one hop).
            peers.received(origin, topic, payload, retain)
        else:
            tap = broker.tap
            if tap is not None and tap.wants(topic):
                counters.uplink_offered += 1
                waiting = broker.offer(tap, topic, payload, qos, retain, session.client_id)
            # Site-wide: hand it to the peers whose interest matches (never blocks: paho queues it).
            if peers is not None and peers.wants(topic):
                peers.forward(topic, payload, qos, retain)
        if route:
            await broker.route(session, topic, payload, qos)
            if retain:
                await broker.retain_message(session, topic, payload, qos)
        return waiting

    def on_window_full(self) -> None:
        """The client's in-flight window is full of PUBLISHes waiting for the buffer: hurry it."""
        hurry = getattr(self.edge_broker.tap, "hurry", None)
        if hurry is not None:
            hurry()

    def on_publish_refused(self, exc: BaseException) -> None:
        """The buffer refused a message: no PUBACK for it; close the connection (the device resends)."""
        counters = self.edge_broker.counters
        counters.uplink_refused += 1
        client = self.session.client_id if self.session is not None else "?"
        self.edge_broker.ratelog.warning("refused", "uplink buffer refused a message from %s: %s", client, exc)
        self.track_task(asyncio.ensure_future(self.handle_connection_closed()))

    def on_invalid_topic(self, topic: str) -> None:
        self.edge_broker.counters.invalid_publish += 1
        client = self.session.client_id if self.session is not None else "?"
        self.edge_broker.ratelog.warning(
            "invalid-topic", "[MQTT-4.7.2-1] %s published on %r ($ topic): closing", client, topic
        )

    def limits(self) -> BrokerLimits:
        return self.edge_broker.limits

    def on_dropped_out(self, qos: int) -> None:
        self.edge_broker.counters.dropped_out += 1
        client = self.session.client_id if self.session is not None else "?"
        self.edge_broker.ratelog.warning(
            f"dropped-out:{client}", "%s is not keeping up: dropping QoS %d messages to it", client, qos
        )

    def on_dropped_in(self, topic: str) -> None:
        self.edge_broker.counters.dropped_in += 1
        client = self.session.client_id if self.session is not None else "?"
        self.edge_broker.ratelog.warning(
            f"dropped-in:{client}",
            "%s has %d QoS 2 messages awaiting PUBREL: dropping a new one on %r (PUBREC sent)",
            client,
            self.limits().max_awaiting_rel,
            topic,
        )

    def count_out(self, n_bytes: int, qos: int) -> None:
        counters = self.edge_broker.counters
        counters.messages_out += 1
        counters.messages_out_by_qos[qos] += 1
        counters.bytes_out += n_bytes

    def track_task(self, task: asyncio.Task[Any]) -> None:
        self.edge_broker.track(task)

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        # amqtt's path (a plugin listening for packets or messages): the tap first, then
        # amqtt's QoS flow acknowledges and routes the message. QoS 2 is ours (below).
        topic = publish_packet.topic_name
        if topic is None or not publishable(topic):
            await super().handle_publish(publish_packet)  # amqtt refuses it and closes
            return
        data = bytes(publish_packet.data or b"")
        qos = publish_packet.qos or 0
        pid = publish_packet.packet_id
        if qos == 2 and pid is not None and self.session is not None:
            await self._handle_qos2_publish(topic, data, bool(publish_packet.retain_flag), pid)
            return
        waiting = await self.accept_publish(topic, data, qos, bool(publish_packet.retain_flag), route=False)
        if waiting is not None:
            try:
                await waiting
            except Exception as exc:
                if qos > 0:
                    self.on_publish_refused(exc)
                    return
        await super().handle_publish(publish_packet)

    async def _handle_qos2_publish(self, topic: str, data: bytes, retain: bool, pid: int) -> None:
        """amqtt's path for an incoming QoS 2 PUBLISH: Method B as on the fast path (entry 80).

        amqtt's incoming flow keeps a task and the whole message per packet identifier until
        PUBREL, without bound. Here the message goes to amqtt's delivery queue at once (so
        plugins listening for messages see it) and only its identifier is kept.
        """
        acks: list[bytes] = []
        verdict, waiting = await self.receive_qos2(topic, data, retain, pid, lambda p, _: acks.append(p), route=False)
        if waiting is not None:
            try:
                await waiting
            except Exception as exc:
                self.on_publish_refused(exc)
                return
        if verdict is Verdict.NEW:
            message = IncomingApplicationMessage(pid, topic, 2, data, retain)
            await self.session.delivered_message_queue.put(message)
        for packet in acks:
            self.outbox().send(packet)

    async def handle_pubrel(self, pubrel: PubrelPacket) -> None:
        # amqtt answers a PUBREL it holds no message for with a warning and no PUBCOMP, so
        # the client's flow never ends (entry 81); Method B holds identifiers only.
        self.outbox().send(self.release_qos2(pubrel.packet_id))

    async def _handle_qos1_message_flow(self, app_message: ApplicationMessage) -> None:
        # amqtt's outgoing flow waits 5 s for the PUBACK and then forgets the message, and
        # forgets it too when the connection drops: nothing is ever redelivered. Ours keeps
        # it in the session's ``inflight_out`` until the PUBACK arrives; if the connection
        # goes first, the next connection of the session resends it with DUP set [MQTT-4.4.0-1].
        session = self.session
        if getattr(app_message, "direction", None) != OUTGOING or session is None or app_message.packet_id is None:
            await super()._handle_qos1_message_flow(app_message)
            return
        packet_id = app_message.packet_id
        session.inflight_out[packet_id] = app_message
        resend = app_message.publish_packet is not None or isinstance(app_message, SentOutgoing)
        packet = app_message.build_publish_packet(dup=resend)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._puback_waiters[packet_id] = waiter
        try:
            await self._send_packet(packet)
            app_message.publish_packet = packet
            app_message.puback_packet = await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return  # the handler stopped (connection gone): stays in flight for the next connection
        finally:
            if self._puback_waiters.get(packet_id) is waiter:
                del self._puback_waiters[packet_id]
        session.inflight_out.pop(packet_id, None)

    async def _retry_deliveries(self) -> None:
        # amqtt awaits every retry (up to 10 s) before the client's message loop starts;
        # a client that does not acknowledge at once would stall its own session. Ours
        # sends the retries in order and lets the broker's task queue follow them.
        if self.session is None:
            return
        messages = list(itertools.chain(self.session.inflight_in.values(), self.session.inflight_out.values()))
        for message in messages:
            task = asyncio.ensure_future(self._handle_message_flow(message))
            self.edge_broker.track(task)
