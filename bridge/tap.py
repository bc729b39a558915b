"""The broker → buffer hand-off: every uplink message is appended to the buffer first.

``BufferTap`` implements the broker's ``UplinkTap``. For QoS ≥ 1 under the
``fsync`` and ``os`` durability modes, ``offer`` returns only after the group
commit containing the message, so the broker's PUBACK means "committed". Under
``relaxed`` the append is scheduled in order but not awaited (ack on receipt).
A message the buffer refuses (``reject_new`` at capacity, disk full) raises
``StoreError`` to the broker, which then does not acknowledge it (QoS 1): the
device keeps it and sends it again after reconnecting. That is the backpressure.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from broker.errors import StoreError
from broker.ratelog import RateLimitedLog
from broker.topics import TopicMap, device_key

__all__ = ["BufferTap"]

log = logging.getLogger(__name__)


class BufferTap:
    """Appends uplink messages to the store; the forwarder drains the store."""

    def __init__(self, uplink_map: TopicMap, store: Any, record_type: Any, *, durability: str) -> None:
        self.uplink_map = uplink_map
        self.store = store
        self.record_type = record_type
        self.durability = durability
        self.failed = 0
        self._ratelog = RateLimitedLog(log)

    def wants(self, topic: str) -> bool:
        return self.uplink_map.rule_for_local(topic) is not None

    def hurry(self) -> None:
        """A client waits on a full window of PUBACKs: ask the store to commit at once."""
        hurry = getattr(self.store, "hurry", None)
        if hurry is not None:
            hurry()

    def offer_nowait(
        self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str
    ) -> asyncio.Future[Any] | None:
        """Queue the append now (in call order); the future resolves once it is committed.

        None when there is nothing to wait for (no rule, or ``relaxed``: ack on receipt).
        A refused append fails the future with ``StoreError`` (counted here).
        """
        rec = self._record(topic, payload, qos, retain, client_id)
        if rec is None:
            return None
        fut: asyncio.Future[Any] = self.store.submit(rec)
        fut.add_done_callback(self._log_failure)
        return None if self.durability == "relaxed" else fut

    async def offer(self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str) -> None:
        rec = self._record(topic, payload, qos, retain, client_id)
        if rec is None:
            return
        if self.durability == "relaxed":
            # Ack on receipt: the append is queued now (in offer order), not awaited, and
            # without a task per message.
            self.store.submit(rec).add_done_callback(self._log_failure)
            return
        # The append is enqueued before its first await, in the order offers arrive; we
        # return (and the broker sends the PUBACK) only after its group commit.
        try:
            await self.store.append(rec)
        except StoreError as exc:
            # Not stored (reject_new, disk full, corrupt file): counted by the buffer. The
            # broker must not acknowledge it; it closes the device's connection instead.
            self._note(exc)
            raise

    def _record(self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str) -> Any:
        """The buffer record for a local message, or None if no uplink rule takes its topic."""
        rule = self.uplink_map.rule_for_local(topic)
        if rule is None:
            return None
        return self.record_type(
            topic=topic,
            payload=payload,
            qos=min(qos, 1),
            retain=retain,
            device=device_key(topic) or client_id,
            overflow=rule.overflow,
        )

    def _log_failure(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._note(exc)

    def _note(self, exc: BaseException) -> None:
        self.failed += 1
        self._ratelog.warning("append", "buffer append failed: %s", exc)
