"""Who is in a site right now: broker state documents, peer-link identities, control topics.

Each edge broker keeps its own state retained on ``edgemq/{site}/{broker}/state`` on
its own broker (and, through the bridge, at the cloud). Its peer link to every other
broker of the site carries a will on that same topic saying offline, so each broker
holds a live copy of every peer's state even with the uplink down (docs/site.md).

A peer link connects with client id ``peer-{site}-{broker}``: the receiving broker
treats what such a session publishes as *forwarded*: delivered to local subscribers
only, never to the uplink and never forwarded again (one hop, loop-free).

Pure: no sockets, no clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from broker.interest import interest_topic
from broker.presence import presence_filter

__all__ = [
    "Member",
    "control_filters",
    "decode_state",
    "offline_state",
    "peer_client_id",
    "peer_of",
    "state_topic",
]

PEER_PREFIX = "peer-"


def state_topic(site: str, broker: str) -> str:
    """Retained state of one edge broker (same topic as the bridge's link state at the cloud)."""
    return f"edgemq/{site}/{broker}/state"


def peer_client_id(site: str, broker: str) -> str:
    """Client id of ``broker``'s peer link (at each other broker of ``site``)."""
    return f"{PEER_PREFIX}{site}-{broker}"


def peer_of(site: str, client_id: str) -> str | None:
    """The origin broker of a peer-link client id of ``site``, else None."""
    prefix = f"{PEER_PREFIX}{site}-"
    if client_id.startswith(prefix) and len(client_id) > len(prefix):
        return client_id[len(prefix) :]
    return None


def control_filters(site: str, broker: str) -> list[str]:
    """What a peer link subscribes to at ``broker``: that broker's own state, interest and presence."""
    return [state_topic(site, broker), interest_topic(site, broker), presence_filter(site, broker)]


def offline_state(site: str, broker: str) -> bytes:
    """The will of ``broker``'s peer links and uplink: its state says offline."""
    return json.dumps({"site": site, "broker": broker, "state": "offline"}).encode()


@dataclass(frozen=True, slots=True)
class Member:
    """One broker's state document, as far as it parses."""

    broker: str
    online: bool
    doc: dict[str, Any]


def decode_state(broker: str, payload: bytes) -> Member:
    """Parse a state document; empty or malformed counts as offline."""
    try:
        doc = json.loads(payload) if payload else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    return Member(broker, doc.get("state") == "online", doc)
