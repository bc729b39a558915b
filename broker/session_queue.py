"""The bound on a session's queue of outgoing messages: count and payload bytes, oldest dropped first.

How it works. amqtt keeps the messages a session cannot be sent now (it is offline, or
its in-flight window is full) in ``Session.retained_messages``, an ``asyncio.Queue``
with no bound (docs/amqtt-notes.md, entries 60 and 82). ``make_room`` is called before a
message is queued: it drops the oldest messages until the queue holds fewer than
``max_queued_messages`` and the new message's payload fits in ``max_queued_bytes``
(0: no byte bound), and tells the caller how many it dropped and whether the new message
fits at all (one larger than ``max_queued_bytes`` is dropped itself, the queue kept).
``ByteCountingQueue`` keeps the queue's payload total as messages come and go, whoever
puts or takes them (amqtt's code or ours): it replaces the session's plain queue on first
use, with the same messages in the same order.

Mosquitto bounds the same queue with ``max_queued_messages`` and ``max_queued_bytes``
(payload bytes) but drops the *new* message when full; we keep the policy of
``max_queued_messages`` here: the newest messages are the ones a device wants.

What it does not do: sending, counters, logging (``broker.fastpath``, ``broker.server``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from broker.limits import BrokerLimits

__all__ = ["ByteCountingQueue", "Room", "make_room", "queue_of"]


def _payload_size(message: Any) -> int:
    data = getattr(message, "data", None)
    return len(data) if data is not None else 0


class ByteCountingQueue(asyncio.Queue[Any]):
    """An ``asyncio.Queue`` of application messages that knows the bytes of their payloads."""

    bytes: int

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self.bytes = 0

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.bytes += _payload_size(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= _payload_size(item)
        return item


def queue_of(session: Any) -> ByteCountingQueue:
    """The session's message queue, made a ``ByteCountingQueue`` (same messages, same order) if it is not one."""
    queue = session.retained_messages
    if isinstance(queue, ByteCountingQueue):
        return queue
    counted = ByteCountingQueue()
    while not queue.empty():
        counted.put_nowait(queue.get_nowait())
    session.retained_messages = counted
    return counted


@dataclass(frozen=True)
class Room:
    """What ``make_room`` did: messages dropped from the queue, and whether the new one may be queued."""

    dropped: int
    fits: bool


def make_room(session: Any, n_bytes: int, limits: BrokerLimits) -> Room:
    """Drop the session's oldest queued messages until one more of ``n_bytes`` payload bytes fits."""
    queue = queue_of(session)
    max_bytes = limits.max_queued_bytes
    if max_bytes and n_bytes > max_bytes:
        return Room(0, False)
    dropped = 0
    while queue.qsize() >= limits.max_queued_messages or (max_bytes and queue.bytes + n_bytes > max_bytes):
        queue.get_nowait()
        dropped += 1
    return Room(dropped, True)
