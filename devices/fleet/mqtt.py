"""The MQTT client of one simulated device: aiomqtt's client, with its socket registered in step with paho.

Two changes to aiomqtt 2.5.1 (pinned; they override its private socket and SUBACK
hooks), neither about the protocol.

Writing: paho tells aiomqtt when its socket wants writing
(``on_socket_register_write``, for every packet it queues) and when it closes
(``on_socket_unregister_write`` then ``on_socket_close``, just before
``close()``). aiomqtt 2.5.1 (``aiomqtt/client.py``,
``Client._on_socket_register_write``) does not register the writer then: it
schedules ``loop.add_writer(fd, ...)`` with ``call_soon_threadsafe``, even on
the loop's own thread, while the unregistration and close happen at once. When
a connection drops in the same loop step as a publish queued its packet, paho
closes the socket first and the scheduled ``add_writer`` then runs on a closed
descriptor: asyncio logs "Exception in callback ... add_writer ... [Errno 9] Bad
file descriptor" with a traceback, one per device (or, if the descriptor number
was already reused by another device's new connection, watches that one).

Here the writer is registered at once on the loop's thread, so registration and
unregistration (aiomqtt's, immediate) happen in paho's order; from another
thread (paho's connect runs in an executor) it is scheduled as before, but only
carried out if paho still has that socket open by then. Reading and the rest
are aiomqtt's.

A SUBACK for a subscribe nobody awaits any more (the device was cancelled, or
the subscribe timed out, before it came) is logged by aiomqtt
(``Client._on_subscribe``) as an error with a traceback; here it is a debug
line, since a fleet that is cancelled while devices connect sees it by design.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.types import PahoSocket
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["DeviceClient"]


class DeviceClient(aiomqtt.Client):
    """aiomqtt's client whose write registration cannot outlive its socket."""

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no running loop: an executor thread
            return False

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: PahoSocket) -> None:
        fd = sock.fileno()

        def writable() -> None:
            # A write that fails means the connection broke: end the client's session with it.
            try:
                client.loop_write()
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            # Scheduled from another thread: paho may have closed (or replaced) the socket since.
            current = client.socket()
            if current is not None and current is sock and current.fileno() == fd:
                self._loop.add_writer(fd, writable)

        if self._on_loop_thread():
            self._loop.add_writer(fd, writable)
        else:
            self._loop.call_soon_threadsafe(register)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None = None,
    ) -> None:
        if mid not in self._pending_subscribes:
            self._logger.debug("SUBACK %d arrived after its subscribe was given up", mid)
            return
        super()._on_subscribe(client, userdata, mid, reason_codes, properties)
