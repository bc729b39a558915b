"""Incoming QoS 2, bounded: the broker as receiver of a client's QoS 2 PUBLISH (docs/amqtt-notes.md, entry 80).

How it works. MQTT 3.1.1 section 4.3.3 (figure 4.3) lets the receiver either store the
message until PUBREL ("Method A", amqtt's and Mosquitto's) or deliver it at once and keep
only its packet identifier until PUBREL ("Method B"). We take Method B: the message is
accepted (buffered, routed) when its PUBLISH arrives, and the session remembers the
identifier in ``AwaitingRelease``, so the state a client can make the broker hold is a
few identifiers, never payloads:

* a PUBLISH whose identifier is held is a resend: PUBREC again, not delivered again
  ("MUST NOT cause duplicate messages to be delivered to any onward recipients");
* a new PUBLISH while ``limit`` identifiers are held is answered with PUBREC and dropped
  (counted): what Mosquitto 2.0 does for a 3.1.1 client beyond ``max_inflight_messages``
  (its ``handle__publish`` fails early when ``db__ready_for_flight`` says the incoming
  quota is used up, and answers PUBREC), checked on the wire by
  ``tests/protocol/test_qos2_incoming.py``; MQTT 5 would close with 0x93 instead;
* a PUBREL is always answered with PUBCOMP, held identifier or not (a resent PUBREL
  after a reconnect, or the release of a dropped message); the identifier is freed.

The set lives on the session, so a persistent session keeps it across reconnects (a
resent PUBLISH with DUP after a reconnect is still recognised).

What it does not do: sockets, acknowledgements, delivery, counters (``broker.fastpath``
and ``broker.handler`` do those with the verdicts returned here); it reads no clocks.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["AwaitingRelease", "Verdict", "awaiting_release"]

_ATTR = "edgemq_awaiting_rel"


class Verdict(enum.Enum):
    """What to do with an incoming QoS 2 PUBLISH (each is answered with PUBREC)."""

    NEW = "new"
    """Deliver it; its identifier is now held until PUBREL."""
    RESENT = "resent"
    """Its identifier is held: a resend, already delivered."""
    OVER_LIMIT = "over-limit"
    """``limit`` identifiers are held: drop it."""


class AwaitingRelease:
    """The packet identifiers of a session's incoming QoS 2 messages not yet released (PUBREL)."""

    __slots__ = ("_ids", "peak")

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self.peak = 0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, pid: object) -> bool:
        return pid in self._ids

    def receive(self, pid: int, limit: int) -> Verdict:
        """A QoS 2 PUBLISH with identifier ``pid`` arrived; at most ``limit`` are held."""
        ids = self._ids
        if pid in ids:
            return Verdict.RESENT
        if len(ids) >= limit:
            return Verdict.OVER_LIMIT
        ids.add(pid)
        if len(ids) > self.peak:
            self.peak = len(ids)
        return Verdict.NEW

    def forget(self, pid: int) -> None:
        """Give ``pid`` up without a PUBREL (its message was not accepted after all)."""
        self._ids.discard(pid)

    def release(self, pid: int) -> bool:
        """A PUBREL for ``pid`` arrived: True if it was held (PUBCOMP is due either way)."""
        if pid in self._ids:
            self._ids.remove(pid)
            return True
        return False


def awaiting_release(session: Any) -> AwaitingRelease:
    """The ``AwaitingRelease`` of an amqtt ``Session`` (made on first use, kept with the session)."""
    held: AwaitingRelease | None = getattr(session, _ATTR, None)
    if held is None:
        held = AwaitingRelease()
        setattr(session, _ATTR, held)
    return held
