"""The broker → buffer hand-off: every uplink message is appended to the buffer first.

``BufferTap`` implements the broker's ``UplinkTap``. For QoS ≥ 1 under the
``fsync`` and ``os`` durability modes, ``offer`` returns only after the group
commit containing the message, so the broker's PUBACK means "on disk". Under
``relaxed`` (and for QoS 0) the append is submitted in order but not awaited.
Failures are counted here and never raised into the broker.
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

    async def offer(self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str) -> None:
        rule = self.uplink_map.rule_for_local(topic)
        if rule is None:
            return
        rec = self.record_type(
            topic=topic,
            payload=payload,
            qos=min(qos, 1),
            retain=retain,
            device=device_key(topic) or client_id,
            overflow=rule.overflow,
        )
        # submit() enqueues synchronously, so order is the order of offers.
        fut = self.store.submit(rec)
        if qos == 0 or self.durability == "relaxed":
            fut.add_done_callback(self._log_failure)
            return
        try:
            await fut
        except StoreError as exc:
            self._note(exc)

    def _log_failure(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._note(exc)

    def _note(self, exc: BaseException) -> None:
        self.failed += 1
        self._ratelog.warning("append", "buffer append failed: %s", exc)
