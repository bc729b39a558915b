"""Following the site's ring document (``edgemq/{site}/ring``) while the fleet runs (pure).

How it works: every device subscribes to the retained ring document on the
broker it is on. ``RingDocuments.parse`` turns a document into the site it
describes, once per distinct payload for the whole fleet (a thousand devices
receive the same bytes). ``ring_key`` says which ring a device uses; when a
document's key differs from the device's, the device recomputes its
preference list (``FailoverPolicy.set_preference``) and, if its owner changed,
moves there gradually (``devices.fleet.device``).

What it does not do: no sockets, no clock, no logging; the device decides when
to probe and move.
"""

from __future__ import annotations

from broker.config import SiteConfig
from devices.placement import site_from_ring_document

__all__ = ["RingDocuments", "RingKey", "ring_key"]

RingKey = tuple[tuple[str, str, int, float], ...]

# Distinct documents kept parsed; a fleet sees one or two at a time (before and after a change).
_CACHE_MAX = 16


def ring_key(site: SiteConfig) -> RingKey:
    """What identifies a ring for a device: its brokers' ids, addresses and weights."""
    return tuple(sorted((b.id, b.host, b.port, b.weight) for b in site.brokers))


class RingDocuments:
    """Ring documents of one site, parsed once per payload."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self._parsed: dict[bytes, SiteConfig | None] = {}

    def parse(self, payload: bytes) -> SiteConfig | None:
        """The site the document describes, or None if it is malformed or of another site."""
        if payload not in self._parsed:
            if len(self._parsed) > _CACHE_MAX:
                self._parsed.clear()
            self._parsed[payload] = site_from_ring_document(self.site, payload)
        return self._parsed[payload]
