"""One client connection's footprint: what an idle connection holds, and no more (issue 9).

amqtt 0.12.1 runs every connection with five tasks besides the one asyncio gives it: the
reader loop, and in ``Broker._client_message_loop`` (``amqtt/broker.py``) one task each
waiting for the DISCONNECT, the next SUBSCRIBE, the next UNSUBSCRIBE and the next message
to deliver, all of them re-created after every event. Each waits on an ``asyncio.Queue``
or ``asyncio.Event``; with the handler's own events an idle connection held about 36 KB of
Python objects (docs/amqtt-notes.md, entries 70–73). Here:

* ``ConnectionHandler`` (``EdgeProtocolHandler`` for every connection ``EdgeBroker``
  accepts) handles each SUBSCRIBE and UNSUBSCRIBE in its reader, in packet order, by
  calling the broker's ``_handle_subscription`` / ``_handle_unsubscription`` (amqtt's
  handler queues them for the client loop, and its two waiter tasks could take an
  UNSUBSCRIBE before the SUBSCRIBE that came first); its queues are ``LazyQueue``s, its
  reader flags ``Flag``s, and ``start`` makes no ``asyncio.Event`` pair and no keep-alive
  timer (the broker handler's ``handle_write_timeout`` does nothing; keep-alive is the
  guard's, ``broker.guard``);
* ``serve_client`` replaces amqtt's client loop: the connection's own task waits on one
  future for the two things left — the disconnect, or a message for the broker to deliver
  (amqtt's path: incoming QoS 2, or any PUBLISH while a plugin listens for messages) — and
  handles them as amqtt's loop does, deliveries first, in order.

An idle connection now has two tasks: asyncio's connection task (``stream_connected``),
which runs ``serve_client``, and the reader.

What it does not do: read or write packets (``broker.fastpath``, ``broker.guard``),
accept PUBLISHes (``broker.handler``), decide sessions (``broker.server``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from amqtt.errors import ProtocolHandlerError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import ApplicationMessage, Session

from broker.handler import EdgeProtocolHandler
from broker.lazy_queue import LazyQueue

if TYPE_CHECKING:
    from broker.server import EdgeBroker

__all__ = ["ConnectionHandler", "Flag", "lighten_handler", "serve_client"]

log = logging.getLogger(__name__)


class Flag:
    """``asyncio.Event``'s ``set``/``is_set``/``wait`` with no deque: a future made only if waited on."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False
        if self._waiter is not None and self._waiter.done():
            self._waiter = None

    async def wait(self) -> bool:
        if self._set:
            return True
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)  # a cancelled waiter must not cancel the others
        return True


def lighten_handler(handler: BrokerProtocolHandler) -> None:
    """Swap the asyncio.Queue pair and Event amqtt's handler ``__init__`` made for lazy ones (entry 70).

    For ``ConnectionHandler`` and for the handlers amqtt makes for sessions restored at
    start-up (``Broker.create_offline_session``), which wait, unused, until their client
    comes back.
    """
    handler._pending_subscriptions = LazyQueue()
    handler._pending_unsubscriptions = LazyQueue()
    handler._reader_stopped = Flag()


class _Broker(Protocol):
    """What ``ConnectionHandler`` and ``serve_client`` need of ``broker.server.EdgeBroker``."""

    async def _handle_subscription(self, session: Session, handler: Any, waiter: asyncio.Future[Any]) -> None: ...

    async def _handle_unsubscription(self, session: Session, handler: Any, waiter: asyncio.Future[Any]) -> None: ...

    async def _handle_message_delivery(self, session: Session, handler: Any, waiter: asyncio.Future[Any]) -> bool: ...

    async def _handle_disconnect(self, session: Session, handler: Any, waiter: asyncio.Future[Any]) -> None: ...


def _done(result: Any) -> asyncio.Future[Any]:
    """A future already holding ``result`` (amqtt's broker methods take their input as a done waiter)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


class ConnectionHandler(EdgeProtocolHandler):
    """``EdgeProtocolHandler`` whose idle connection holds no queues, events, timers or waiter tasks."""

    def __init__(self, plugins_manager: Any, broker: EdgeBroker, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(plugins_manager, loop=loop)
        self.edge_broker = broker
        lighten_handler(self)
        # Every attribute the handler will ever have, set now and always in this order: CPython
        # keeps a class's instance attributes in one shared key table only while they are
        # added early; one added late (``_acks`` when the reader starts) made each handler a
        # dict of its own, 1.9 KB (entry 72).
        self.keepalive_timeout: int | None = None
        self._pump_scheduled = False
        self._outbox = None
        self._acks = None

    async def start(self) -> None:
        # amqtt's ``ProtocolHandler.start`` and ``BrokerProtocolHandler.start``, without the
        # two Events (a Flag each), the wait for the reader (it starts at the next loop turn,
        # before anything it must answer can arrive) and the keep-alive TimerHandle that
        # would call the broker handler's empty ``handle_write_timeout``.
        if not self._is_attached():
            raise ProtocolHandlerError("Handler is not attached to a stream")
        self._reader_ready: Any = Flag()
        self._reader_stopped = Flag()
        client_id = self.session.client_id if self.session is not None else "?"
        self._reader_task: asyncio.Task[None] | None = asyncio.create_task(
            self._reader_loop(), name=f"reader {client_id}"
        )
        waiter: asyncio.Future[Any] | None = getattr(self, "_disconnect_waiter", None)
        if waiter is None or waiter.done():
            self._disconnect_waiter = asyncio.get_running_loop().create_future()
        await self._retry_deliveries()

    def release(self) -> None:
        """Let go of the ended connection's objects (streams, guard, reader task, outbox).

        The handler stays in ``Broker._sessions`` beside a persistent session for as long as
        the session lives (days, for a device that is off); amqtt keeps the dead connection
        reachable from it, 8 KB per offline session (entry 73). A handler without a writer is
        one the fast path never writes to (``FastPathHandler.deliver``) and amqtt's
        ``_send_packet`` skips.
        """
        self.reader = None
        self.writer = None
        self._reader_task = None
        self._reader_ready = None
        self._outbox = None
        self._acks = None

    async def handle_subscribe(self, subscribe: Any) -> None:
        await super().handle_subscribe(subscribe)  # amqtt checks the packet and queues it
        queue = self._pending_subscriptions
        while self.session is not None and not queue.empty():
            await self.edge_broker._handle_subscription(self.session, self, _done(queue.get_nowait()))

    async def handle_unsubscribe(self, unsubscribe: Any) -> None:
        await super().handle_unsubscribe(unsubscribe)
        queue = self._pending_unsubscriptions
        while self.session is not None and not queue.empty():
            await self.edge_broker._handle_unsubscription(self.session, self, _done(queue.get_nowait()))


async def serve_client(broker: _Broker, session: Session, handler: BrokerProtocolHandler) -> None:
    """amqtt's client loop without its four waiter tasks: one future per wait, in this task.

    Delivers what amqtt's QoS flows put into ``session.delivered_message_queue`` (in order)
    until the handler's disconnect waiter is done, then hands the disconnect to the broker
    (will, handler stopped, session disconnected), as ``Broker._client_message_loop`` does.
    A delivery the broker refuses (a PUBLISH to an invalid topic) closes the connection.
    """
    loop = asyncio.get_running_loop()
    disconnect: asyncio.Future[Any] | None = handler._disconnect_waiter
    if disconnect is None:  # already disconnected between start() and here (amqtt: result None)
        disconnect = _done(None)
    queue = session.delivered_message_queue
    wake: asyncio.Future[None] | None = None

    def poke(_: Any = None) -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    disconnect.add_done_callback(poke)
    try:
        while True:
            while not queue.empty():
                message: ApplicationMessage = queue.get_nowait()
                if not await broker._handle_message_delivery(session, handler, _done(message)):
                    await handler.handle_connection_closed()  # protocol violation: close, will fires
            if disconnect.done():
                break
            wake = loop.create_future()
            if isinstance(queue, LazyQueue):
                queue.notify = poke
            await wake
    except asyncio.CancelledError:
        log.debug("client loop of %s cancelled", session.client_id)
        return  # as amqtt's loop: no disconnect handling when cancelled (broker shutdown)
    finally:
        disconnect.remove_done_callback(poke)
        if isinstance(queue, LazyQueue) and queue.notify is poke:
            queue.notify = None
    await broker._handle_disconnect(session, handler, disconnect)
