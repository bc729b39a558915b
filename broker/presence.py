"""Site-wide device presence: which broker of the site a device is connected to.

Every edge broker writes, retained in its own namespace, one record per device that
connected to it: ``edgemq/{site}/{broker}/presence/{device}`` =
``{"state": "online"|"offline", "broker": ..., "since": ...}`` (``since``: wall-clock
seconds when that state began). Each broker writes only its own records, so brokers
never overwrite each other; the peer links copy every broker's records to every
other broker, and ``PresenceTable`` merges them.

Uses (docs/site.md):
* ``present_at(device)``: the broker a device is online at (latest ``since`` wins),
  for the downlink routing of docs/ownership.md (``route_command``);
* ``suppress_will(device, me, connected_since)``: a device's will firing on a broker
  it already left (keep-alive expiry after it reconnected elsewhere) must not mark it
  offline: suppressed when the device is online at another broker since a time no
  earlier than its connection here began.

Pure: no sockets, no clock (times are arguments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["Presence", "PresenceTable", "decode", "encode", "presence_filter", "presence_topic"]

ONLINE = "online"
OFFLINE = "offline"


def presence_topic(site: str, broker: str, device: str) -> str:
    """The broker-written presence record of ``device`` at ``broker``."""
    return f"edgemq/{site}/{broker}/presence/{device}"


def presence_filter(site: str, broker: str) -> str:
    """Every presence record one broker writes."""
    return f"edgemq/{site}/{broker}/presence/+"


@dataclass(frozen=True, slots=True)
class Presence:
    """One broker's view of one device."""

    state: str
    broker: str
    since: float

    @property
    def online(self) -> bool:
        return self.state == ONLINE


def encode(p: Presence) -> bytes:
    return json.dumps({"state": p.state, "broker": p.broker, "since": p.since}).encode()


def decode(payload: bytes, broker: str) -> Presence | None:
    """Parse a presence record written by ``broker``; None if malformed or empty (cleared)."""
    try:
        data = json.loads(payload)
        state = str(data["state"])
        since = float(data["since"])
    except (ValueError, TypeError, KeyError):
        return None
    if state not in (ONLINE, OFFLINE):
        return None
    return Presence(state, broker, since)


class PresenceTable:
    """Per device, the latest record of each broker; brokers known down count as offline."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Presence]] = {}
        self._down: set[str] = set()

    def update(self, device: str, record: Presence | None, broker: str) -> None:
        """Store ``broker``'s record of ``device`` (None: the record was cleared)."""
        per = self._records.setdefault(device, {})
        if record is None:
            per.pop(broker, None)
        else:
            per[broker] = record

    def broker_down(self, broker: str) -> None:
        """``broker`` is gone (its state went offline): its devices are no longer present there."""
        self._down.add(broker)

    def broker_up(self, broker: str) -> None:
        self._down.discard(broker)

    def present(self, device: str) -> Presence | None:
        """The online record with the latest ``since`` among live brokers, else None."""
        best: Presence | None = None
        for p in self._records.get(device, {}).values():
            if p.online and p.broker not in self._down and (best is None or p.since > best.since):
                best = p
        return best

    def present_at(self, device: str) -> str | None:
        """The broker ``device`` is connected to, as far as the site knows; None if offline."""
        p = self.present(device)
        return None if p is None else p.broker

    def suppress_will(self, device: str, me: str, connected_since: float) -> bool:
        """True if ``device``'s will on ``me`` is stale: it is online at another broker since
        ``connected_since`` (when its connection to ``me`` began) or later."""
        p = self.present(device)
        return p is not None and p.broker != me and p.since >= connected_since

    def devices(self) -> list[str]:
        return sorted(self._records)

    def devices_recorded_by(self, broker: str) -> list[str]:
        """Devices ``broker`` has a record of (online or offline)."""
        return sorted(d for d, per in self._records.items() if broker in per)
