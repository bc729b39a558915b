"""A FIFO queue with ``asyncio.Queue``'s interface that holds no storage while it is empty.

Why: amqtt 0.12.1 gives every session two ``asyncio.Queue``s (``amqtt/session.py``,
``Session.__init__``: ``retained_messages``, ``delivered_message_queue``) and every broker
handler two more (``amqtt/mqtt/protocol/broker_handler.py``,
``BrokerProtocolHandler.__init__``: pending SUBSCRIBEs and UNSUBSCRIBEs). An empty
``asyncio.Queue`` costs about 3.2 KB on CPython 3.11: three ``collections.deque``s (items,
getters, putters; 624 bytes each however empty) and an ``asyncio.Event`` with a fourth.
An idle connection never uses any of them; together they were 13 KB of its 36 KB
(docs/amqtt-notes.md, entry 70). :class:`LazyQueue` makes its deque on the first put and
drops it when the queue runs empty again.

What it offers: ``qsize``, ``empty``, ``full``, ``put_nowait``, ``put``, ``get_nowait``,
``get`` (waiting, cancellation-safe: a woken getter that is cancelled passes the item's
turn on), and ``notify``: a callable run after every put, which lets one waiter follow
several queues without a task per queue. What it does not: ``maxsize`` (always
unbounded, as every queue amqtt makes), ``task_done``/``join``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LazyQueue"]

T = TypeVar("T")


class LazyQueue(Generic[T]):
    __slots__ = ("_getters", "_items", "notify")

    maxsize = 0

    def __init__(self, items: collections.abc.Iterable[T] = ()) -> None:
        self._items: collections.deque[T] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self.notify: Callable[[], None] | None = None
        for item in items:
            self.put_nowait(item)

    def qsize(self) -> int:
        return len(self._items) if self._items is not None else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._wake_one()
        if self.notify is not None:
            self.notify()

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> T:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None  # back to no storage
        return item

    async def get(self) -> T:
        while not self._items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                getters = self._getters
                if getters is not None and waiter in getters:
                    getters.remove(waiter)
                elif self._items:
                    self._wake_one()  # we were woken for an item we will not take
                raise
            finally:
                if self._getters is not None and not self._getters:
                    self._getters = None
        return self.get_nowait()

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            waiter = getters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def __repr__(self) -> str:
        return f"<LazyQueue size={self.qsize()} getters={len(self._getters or ())}>"
