"""Which connected devices a broker owns, and whether to admit a device whose owner is elsewhere.

How it works
------------
A device is known by its ownership key ``{site}/{device}``: from its client id
(``dev-{site}-{device}``, the convention of the fleet and of our device client;
``device_from_client_id``) or from a device topic (``broker.topics.device_key``).
``count`` folds a broker's connected client ids into owned / foreign / unknown
(not a device id of this site, e.g. bridges, dashboards, probes), with the
foreign devices grouped by their owner. ``admit`` is the ownership policy at
CONNECT time:

    policy   device's owner          decision
    -------  ----------------------  -----------------------------------------
    any      this broker             admit (owned)
    any      not alive               admit (failover: the owner is down)
    warn     alive, another broker   admit, warn (the device should be there)
    refuse   alive, another broker   refuse (the device should be there)
    any      no key (not a device)   admit (nothing to decide)

"Alive" is what the caller knows: typically the brokers whose retained
``edgemq/{site}/{broker}/state`` says online (``alive_from_states`` folds those
payloads), plus itself.

``route_command`` is the downlink rule of docs/ownership.md: of a site's
brokers, exactly one acts on a command for a device: the broker the device is
present on delivers it; if the device is offline, the first alive broker of
its preference list (normally the owner) queues it; every other broker drops
it. ``ring_document`` is the site's ring as the JSON a plain-MQTT device reads
(retained on ``edgemq/{site}/ring``) to compute its own owner; its ``digest``
(``ring_digest``) changes whenever the brokers, their addresses or weights do.

What it does not do
-------------------
No I/O, no MQTT, no clocks, no logging: it does not subscribe to state topics,
refuse connections or count over time; the broker process does that and calls
these functions. It cannot tell a device that *could not reach* its owner (a
partition between the device and the owner) from one that ignores the ring:
``refuse`` would bounce the former, which is why ``warn`` is the default.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from broker.config import SiteConfig
from broker.ring import Ring

__all__ = [
    "Decision",
    "OwnershipCount",
    "Policy",
    "Route",
    "Verdict",
    "admit",
    "alive_from_states",
    "count",
    "device_from_client_id",
    "ring_digest",
    "ring_document",
    "ring_topic",
    "route_command",
]

Policy = Literal["warn", "refuse"]


class Verdict(StrEnum):
    """Why a device was admitted or refused."""

    OWNED = "owned"
    NOT_A_DEVICE = "not a device"
    OWNER_DOWN = "owner down"
    FOREIGN = "foreign"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Decision:
    """The ownership policy's answer for one connecting device."""

    admit: bool
    verdict: Verdict
    owner: str | None
    reason: str

    @property
    def warn(self) -> bool:
        """Log a warning: a device connected away from its live owner (admitted or not)."""
        return self.verdict in (Verdict.FOREIGN, Verdict.REFUSED)


@dataclass(frozen=True, slots=True)
class OwnershipCount:
    """A broker's connected clients by ownership."""

    owned: int
    foreign: int
    unknown: int
    foreign_by_owner: dict[str, int] = field(default_factory=dict)


def device_from_client_id(site_id: str, client_id: str) -> str | None:
    """The device id in a client id ``dev-{site}-{device}`` of this site, else None."""
    prefix = f"dev-{site_id}-"
    if client_id.startswith(prefix) and len(client_id) > len(prefix):
        return client_id[len(prefix) :]
    return None


def count(ring: Ring, site_id: str, this_broker: str, client_ids: Iterable[str]) -> OwnershipCount:
    """Fold connected client ids into owned, foreign (by owner) and unknown."""
    owned = unknown = 0
    foreign: Counter[str] = Counter()
    for cid in client_ids:
        device = device_from_client_id(site_id, cid)
        if device is None:
            unknown += 1
            continue
        owner = ring.owner(f"{site_id}/{device}")
        if owner == this_broker:
            owned += 1
        else:
            foreign[owner] += 1
    return OwnershipCount(owned, sum(foreign.values()), unknown, dict(sorted(foreign.items())))


def admit(
    ring: Ring,
    device_key: str | None,
    this_broker: str,
    alive_brokers: Iterable[str],
    policy: Policy = "warn",
) -> Decision:
    """May the device with ``device_key`` (``{site}/{device}``, None if unknown) connect to this broker?"""
    if device_key is None:
        return Decision(True, Verdict.NOT_A_DEVICE, None, "not a device of this site")
    owner = ring.owner(device_key)
    if owner == this_broker:
        return Decision(True, Verdict.OWNED, owner, f"{this_broker} owns {device_key}")
    alive = set(alive_brokers) | {this_broker}
    if owner not in alive:
        return Decision(True, Verdict.OWNER_DOWN, owner, f"owner {owner} of {device_key} is down: failover")
    if policy == "refuse":
        return Decision(False, Verdict.REFUSED, owner, f"owner {owner} of {device_key} is alive: connect there")
    return Decision(True, Verdict.FOREIGN, owner, f"owner {owner} of {device_key} is alive; admitted (policy warn)")


def alive_from_states(states: Mapping[str, bytes | str]) -> frozenset[str]:
    """Brokers whose retained state payload (``{"state": "online", ...}``) says online; others are not alive."""
    alive = set()
    for broker, payload in states.items():
        try:
            data = json.loads(payload)
        except (ValueError, TypeError):
            continue
        if isinstance(data, dict) and data.get("state") == "online":
            alive.add(broker)
    return frozenset(alive)


class Route(StrEnum):
    """What one broker does with a downlink command for a device."""

    DELIVER = "deliver"  # the device is connected here
    QUEUE = "queue"  # the device is offline and this broker keeps its commands (TTL)
    DROP = "drop"  # another broker of the site acts on it


def route_command(
    ring: Ring, device_key: str, this_broker: str, present_at: str | None, alive_brokers: Iterable[str]
) -> Route:
    """Exactly one alive broker of the site acts on a command; ``present_at`` is where the device is connected."""
    alive = set(alive_brokers) | {this_broker}
    if present_at == this_broker:
        return Route.DELIVER
    if present_at is not None and present_at in alive:
        return Route.DROP
    keeper = next((b for b in ring.preference(device_key, len(ring)) if b in alive), None)
    return Route.QUEUE if keeper == this_broker else Route.DROP


def ring_topic(site_id: str) -> str:
    """Where a site's ring document is published, retained."""
    return f"edgemq/{site_id}/ring"


def ring_digest(brokers: Iterable[Mapping[str, object]]) -> str:
    """A stable digest of a ring document's brokers (id, host, port, weight; order does not matter).

    Two documents with the same digest describe the same ring at the same addresses: a
    client compares digests to see that the ring changed (a broker joined, left, was re-weighted).
    """
    rows = sorted((str(b["id"]), str(b["host"]), int(str(b["port"])), float(str(b["weight"]))) for b in brokers)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()[:16]


def ring_document(site: SiteConfig) -> dict[str, object]:
    """The site's ring as JSON-ready data: brokers (id, address, weight), its digest, and the hash spec."""
    brokers: list[dict[str, object]] = [
        {"id": b.id, "host": b.host, "port": b.port, "weight": b.weight}
        for b in sorted(site.brokers, key=lambda b: b.id)
    ]
    return {
        "version": 1,
        "digest": ring_digest(brokers),
        "site": site.id,
        "key": "{site}/{device}",
        "hash": {
            "scheme": "weighted-rendezvous (straw2)",
            "key_digest": "blake2b(utf8(key), digest_size=8, person='edgemq.key.v1') as little-endian u64 h",
            "broker_seeds": "blake2b(utf8(broker_id), digest_size=16, person='edgemq.seed.v1'): "
            "s1 = bytes[0:8], s2 = bytes[8:16], little-endian u64",
            "mix": "p = (h ^ s1) * 0x9E3779B97F4A7C15 (128-bit); v = lo64(p) ^ hi64(p); "
            "p = (v ^ s2) * 0xBF58476D1CE4E5B9; v = lo64(p) ^ hi64(p); "
            "m = (v >> 12) | 1; u = m / 2**52",
            "score": "ln(u) / weight; weight 0 never owns",
            "owner": "highest score; ties: larger u, then smaller broker id",
            "preference": "brokers by descending score (same ties)",
        },
        "brokers": brokers,
    }
