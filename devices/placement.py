"""Which of its site's brokers a device belongs to: the site's ring, read from the cluster file.

How it works: ``site_ring`` builds the site's ``broker.ring.Ring`` from the
brokers' ids and weights (cached by those pairs, so building it per call is
free); the ownership key is ``{site}/{device}``. ``choose_broker`` is the
owner, ``preference`` the owner followed by its distinct successors (the order
a device walks when its owner is unreachable). Every process computes the same
answer from the same cluster file, whatever the order brokers are listed in
and whatever PYTHONHASHSEED is.

``site_from_ring_document`` reads the site's ring document (``edgemq/{site}/ring``,
``broker.ownership.ring_document``) into a ``SiteConfig``: how a running device
learns that a broker joined or left without a new cluster file.

What it does not do: no liveness, no I/O. Whether a broker answers is the
device client's business (``devices.failover`` decides where to go next).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from broker.config import BrokerConfig, SiteConfig
from broker.errors import RingError
from broker.ring import Ring

__all__ = ["choose_broker", "device_key", "preference", "site_from_ring_document", "site_ring"]


def device_key(site_id: str, device_id: str) -> str:
    """The ownership key of a device: ``{site}/{device}``."""
    return f"{site_id}/{device_id}"


@lru_cache(maxsize=256)
def _ring(site_id: str, pairs: tuple[tuple[str, float], ...]) -> Ring:
    if not any(w > 0 for _, w in pairs):
        raise RingError(
            f"site {site_id!r} has no broker with a non-zero weight",
            hint="give at least one broker of the site a weight > 0",
            site=site_id,
        )
    return Ring(pairs)


def site_ring(site: SiteConfig) -> Ring:
    """The ownership ring of ``site``: its brokers with their weights from the cluster file."""
    return _ring(site.id, tuple(sorted((b.id, b.weight) for b in site.brokers)))


def preference(site: SiteConfig, device_id: str, n: int | None = None) -> list[BrokerConfig]:
    """The owner of ``device_id`` then its successors: ``n`` brokers (all with weight > 0 if None)."""
    ring = site_ring(site)
    ids = ring.preference(device_key(site.id, device_id), n if n is not None else len(ring))
    by_id = {b.id: b for b in site.brokers}
    return [by_id[b] for b in ids]


def choose_broker(site: SiteConfig, device_id: str) -> BrokerConfig:
    """The broker of ``site`` that owns ``device_id`` (where it connects when that broker answers)."""
    return site.broker(site_ring(site).owner(device_key(site.id, device_id)))


def site_from_ring_document(site: SiteConfig, payload: bytes) -> SiteConfig | None:
    """``site`` with the brokers of a ring document (id, host, port, weight); None if it is not one for ``site``.

    Brokers the document shares with ``site`` keep their other settings (``tls_port``...);
    brokers it does not list are dropped. A malformed document, one of another site, or one
    whose ring nobody could own with (every weight 0) gives None: keep the ring you have.
    """
    try:
        doc: Any = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("site") != site.id or not isinstance(doc.get("brokers"), list):
            return None
        known = {b.id: b for b in site.brokers}
        brokers = []
        for row in doc["brokers"]:
            fields = {k: row[k] for k in ("id", "host", "port", "weight")}
            base = known.get(fields["id"])
            brokers.append(base.model_copy(update=fields) if base is not None else BrokerConfig(**fields))
        new = SiteConfig.model_validate(site.model_dump() | {"brokers": [b.model_dump() for b in brokers]})
        site_ring(new)
    except (ValueError, TypeError, KeyError, ValidationError, RingError):
        return None
    return new
