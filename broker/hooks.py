"""What the broker asks of the rest of edgemq, and what it counts.

The broker holds no bridge logic: the uplink tap (the store-and-forward buffer), the
site peers (peer links, presence) are protocols here that ``bridge`` implements and
``edgemq.node`` wires in. ``BrokerCounters`` are the broker's own live counters, read by
the stats writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["BrokerCounters", "PeerHook", "PresenceHook", "UplinkTap"]


class UplinkTap(Protocol):
    """Where the broker hands messages that must go upstream (implemented by the bridge)."""

    def wants(self, topic: str) -> bool:
        """True if an uplink rule takes this topic."""

    async def offer(self, topic: str, payload: bytes, qos: int, retain: bool, client_id: str) -> None:
        """Take the message; returns once it is as durable as the configured policy promises.

        Must not raise for capacity problems: those are counted by the tap.

        A tap may also offer ``offer_nowait`` (same arguments): take the message now, in
        call order, and return a future that completes (or fails) as ``offer`` would
        return (or raise), or None if there is nothing to wait for. The broker's fast path
        then needs no task per message (``EdgeBroker.offer``).

        A tap may also offer ``hurry()``: a client has a full in-flight window (20) of
        PUBLISHes waiting for their commit, so the tap should not wait for more.
        """


class PeerHook(Protocol):
    """Site peering as the broker sees it (implemented by the bridge's site peers)."""

    def origin(self, client_id: str) -> str | None:
        """The peer broker a session is the link of, else None (a local client)."""

    def received(self, origin: str, topic: str, payload: bytes, retain: bool) -> None:
        """Count a message a peer forwarded (it is then delivered to local subscribers only)."""

    def wants(self, topic: str) -> bool:
        """True if some peer's interest matches ``topic`` (cheap: called for every local PUBLISH)."""

    def forward(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Hand a locally published message to the peers that want it; must not block."""


class PresenceHook(Protocol):
    """Told of connections; decides whether a will is stale (implemented by the site peers)."""

    def connected(self, client_id: str) -> None: ...
    def disconnected(self, client_id: str) -> None: ...
    def suppress_will(self, client_id: str) -> bool:
        """True if this client's will must not fire (it is online at another broker since)."""


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
    admission_owned: int = 0
    """CONNECTs the ``admission`` hook found owned by this broker."""
    admission_warned: int = 0
    """CONNECTs admitted with a warning: the device's live owner is another broker (policy warn)."""
    admission_refused: int = 0
    """CONNECTs refused by the ``admission`` hook (CONNACK 0x05)."""
    wills_suppressed: int = 0
    """Wills not fired because the ``presence`` hook found them stale."""
    dropped_out: int = 0
    """Messages to connected clients dropped: QoS 0 to one not reading, or the oldest of a full queue."""
    dropped_in: int = 0
    """QoS 2 PUBLISHes dropped (PUBREC sent): the client had ``max_awaiting_rel`` awaiting PUBREL."""
    messages_in_by_qos: list[int] = field(default_factory=lambda: [0, 0, 0])
    """PUBLISHes received from clients, by their QoS (0, 1, 2)."""
    messages_out_by_qos: list[int] = field(default_factory=lambda: [0, 0, 0])
    """PUBLISHes sent to subscribers, by the QoS they were sent with."""
