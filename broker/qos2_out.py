"""Outgoing QoS 2 deliveries that survive a reconnect [MQTT-4.4.0-1] (docs/amqtt-notes.md, entry 61).

How it works. amqtt's ``ProtocolHandler._handle_qos2_message_flow`` (OUTGOING) waits 5 s
for PUBREC, then for PUBCOMP, and removes the message from ``session.inflight_out`` in
the ``finally`` of either wait: a subscriber that goes away (or is slow) before PUBREC or
before PUBCOMP loses the message and the session has nothing to resend. ``QoS2Outgoing``
keeps the message in ``inflight_out`` until its PUBCOMP, with no timeout:

* before PUBREC, the next connection of the session resends the PUBLISH with DUP=1;
* after PUBREC (recorded on the message), it sends the PUBREL again, never the PUBLISH
  (the receiver may already have passed it on).

Both come from amqtt's ``_retry_deliveries`` (ours: ``EdgeProtocolHandler``), which runs
each in-flight message's flow again when a session reconnects.

What it does not do: incoming QoS 2 (``broker.qos2_in``); keep-alive closes a client that never
answers; the in-flight window is ``broker.fastpath``'s.
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.pubrel import PubrelPacket
from amqtt.session import OUTGOING

__all__ = ["QoS2Outgoing"]


class QoS2Outgoing(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt ships no type info
    """amqtt's broker handler whose outgoing QoS 2 messages stay in flight until PUBCOMP."""

    async def _handle_qos2_message_flow(self, app_message: Any) -> None:
        session = self.session
        pid = app_message.packet_id
        if getattr(app_message, "direction", None) != OUTGOING or session is None or pid is None:
            await super()._handle_qos2_message_flow(app_message)
            return
        session.inflight_out[pid] = app_message
        if app_message.pubrec_packet is None:
            resend = app_message.publish_packet is not None
            packet = app_message.build_publish_packet(dup=resend)
            app_message.publish_packet = packet  # (about to be) sent: any resend sets DUP
            got = await self._wait_after(packet, self._pubrec_waiters, pid)
            if got is None:
                return  # connection gone: the next one resends the PUBLISH (DUP)
            app_message.pubrec_packet = got
        if app_message.pubcomp_packet is None:
            app_message.pubrel_packet = PubrelPacket.build(pid)
            got = await self._wait_after(app_message.pubrel_packet, self._pubcomp_waiters, pid)
            if got is None:
                return  # connection gone: the next one sends the PUBREL again
            app_message.pubcomp_packet = got
        if session.inflight_out.get(pid) is app_message:
            del session.inflight_out[pid]

    async def _wait_after(self, packet: Any, waiters: dict[int, asyncio.Future[Any]], pid: int) -> Any:
        """Send ``packet``, then wait for the answer registered under ``pid``; None if the connection ended."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiters[pid] = waiter  # before sending: the answer may come in the same loop turn
        try:
            await self._send_packet(packet)
            return await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return None  # ``_stop_waiters``: the handler stopped
        except (ConnectionError, OSError):
            return None
        finally:
            if waiters.get(pid) is waiter:
                del waiters[pid]
