"""The uplink's in-flight window: which publishes await a PUBACK, and since when.

How it works
------------
The link records each publish it hands to the connection as ``mid -> (seq, sent_at)``
and removes it when its PUBACK arrives, in any order. The window is full at ``limit``
entries; the link does not publish more until a PUBACK frees a slot. Entries are kept
in send order, so the oldest unacknowledged publish is the first one, and one
watchdog asks :meth:`InflightWindow.overdue` instead of a timer per message.

What it does not do
-------------------
No sockets, no clock (times are arguments), no store acks, no resending: on a broken
link the shell drops the window and restarts from the buffer's oldest row.
"""

from __future__ import annotations

__all__ = ["InflightWindow"]


class InflightWindow:
    """Publishes sent and not yet acknowledged, oldest first; at most ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._by_mid: dict[int, tuple[int, float]] = {}  # insertion order = send order

    def __len__(self) -> int:
        return len(self._by_mid)

    def __contains__(self, mid: object) -> bool:
        return mid in self._by_mid

    @property
    def full(self) -> bool:
        """No room for another publish until a PUBACK arrives."""
        return len(self._by_mid) >= self.limit

    def sent(self, mid: int, seq: int, now: float) -> None:
        """Record a publish handed to the connection at ``now``."""
        if mid in self._by_mid:
            raise ValueError(f"packet id {mid} is already in flight")
        self._by_mid[mid] = (seq, now)

    def acked(self, mid: int) -> int | None:
        """The seq acknowledged by a PUBACK for ``mid``; None if ``mid`` is not ours."""
        entry = self._by_mid.pop(mid, None)
        return None if entry is None else entry[0]

    def oldest_sent_at(self) -> float | None:
        """When the oldest unacknowledged publish was sent; None when the window is empty."""
        for _, sent_at in self._by_mid.values():
            return sent_at
        return None

    def overdue(self, now: float, timeout: float) -> bool:
        """Whether the oldest unacknowledged publish has waited longer than ``timeout``."""
        oldest = self.oldest_sent_at()
        return oldest is not None and now - oldest > timeout

    def clear(self) -> None:
        """Forget everything in flight (the connection is gone)."""
        self._by_mid.clear()
