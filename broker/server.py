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

This module holds no bridge logic: the tap is a protocol the bridge implements.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import OutgoingApplicationMessage, Session

from broker.errors import StoreError
from broker.ratelog import RateLimitedLog

__all__ = ["BrokerCounters", "EdgeBroker", "UplinkTap", "amqtt_config"]

log = logging.getLogger(__name__)


class UplinkTap(Protocol):
    """Where the broker hands messages that must go upstream (implemented by the bridge)."""

    def wants(self, topic: str) -> bool:
        """True if an uplink rule takes this topic."""

    async def offer(self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str) -> None:
        """Take the message; returns once it is as durable as the configured policy promises.

        Must not raise for capacity problems: those are counted by the tap.
        """


@dataclass
class BrokerCounters:
    """Live counters of one broker process (read by the stats writer)."""

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    uplink_offered: int = 0
    uplink_refused: int = 0
    invalid_publish: int = 0


def _publishable(topic: str) -> bool:
    return bool(topic) and "#" not in topic and "+" not in topic and not topic.startswith("$")


class EdgeProtocolHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt ships no type info
    """amqtt's broker-side protocol handler with the uplink hand-off and counters."""

    edge_broker: EdgeBroker

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        broker = self.edge_broker
        counters = broker.counters
        topic = publish_packet.topic_name
        data = publish_packet.data or b""
        counters.messages_in += 1
        counters.bytes_in += len(data)
        tap = broker.tap
        # Runs synchronously up to the first await, in packet order: offers reach the
        # tap in the order the client sent them.
        if tap is not None and topic is not None and _publishable(topic) and tap.wants(topic):
            session = self.session
            if session is not None and await broker.may_publish(session, topic):
                counters.uplink_offered += 1
                qos = publish_packet.qos or 0
                try:
                    await tap.offer(topic, bytes(data), qos, bool(publish_packet.retain_flag), session.client_id)
                except StoreError as exc:
                    counters.uplink_refused += 1
                    broker.ratelog.warning(
                        "refused", "uplink buffer refused a message from %s on %s: %s", session.client_id, topic, exc
                    )
                    if qos > 0:
                        # No PUBACK for what we could not store: close the connection; the
                        # device resends after reconnecting (backpressure, nothing lost).
                        await self.handle_connection_closed()
                        return
        await super().handle_publish(publish_packet)

    async def mqtt_publish(
        self,
        topic: str,
        data: bytes | bytearray,
        qos: int | None,
        retain: bool,
        ack_timeout: int | None = None,
    ) -> OutgoingApplicationMessage:
        counters = self.edge_broker.counters
        counters.messages_out += 1
        counters.bytes_out += len(data)
        return await super().mqtt_publish(topic, data, qos, retain, ack_timeout)


class EdgeBroker(Broker):  # type: ignore[misc]  # amqtt ships no type info
    """amqtt Broker with edgemq's hooks. Use for both edge and cloud brokers."""

    def __init__(self, config: dict[str, Any], *, tap: UplinkTap | None = None) -> None:
        super().__init__(config)
        self.tap = tap
        self.counters = BrokerCounters()
        self.ratelog = RateLimitedLog(log)

    async def _handle_client_session(
        self,
        reader: Any,
        writer: Any,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Any,
        listener_name: str,
    ) -> None:
        # amqtt builds the handler in ``BrokerProtocolHandler.init_from_connect`` (a fixed
        # class) and attaches it here; swap in ours before it is attached.
        ours = EdgeProtocolHandler(self.plugins_manager, loop=self._loop)
        ours.edge_broker = self
        await super()._handle_client_session(reader, writer, client_session, ours, server, listener_name)

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
        return [
            cid for cid, (session, _) in self.sessions.items() if session.transitions.state == "connected"
        ]


def amqtt_config(host: str, port: int, *, max_connections: int = -1) -> dict[str, Any]:
    """amqtt's config dict for one TCP listener with anonymous access and no chatty plugins."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": max_connections}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def wait_forever() -> None:
    """Park the current task until cancelled."""
    await asyncio.Event().wait()
