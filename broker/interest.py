"""Subscription interest of one broker: which topics its local subscribers want.

A broker of a site publishes, retained on its own broker, the topic filters its
*local* clients subscribe to (``edgemq/{site}/{broker}/interest``; peer links and
probes are not local clients). Its peers read it over their peer links and forward
to it only the messages some local subscriber there matches (docs/site.md).

Pure: no sockets, no clock. ``summarize`` bounds the document (many devices each
subscribing to their own command topic must not make a 10,000-filter document): past
``max_filters`` filters are widened to their first level (``commands/#``), and past
that to ``#`` (forward everything): widening only ever forwards more, never less.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from broker.topics import matches

__all__ = ["MAX_FILTERS", "Interest", "decode", "encode", "interest_topic", "summarize"]

MAX_FILTERS = 256
_CACHE = 4096


def interest_topic(site: str, broker: str) -> str:
    """Retained interest document of one broker (on that broker, and copied to its peers)."""
    return f"edgemq/{site}/{broker}/interest"


def _covered(f: str, by: str) -> bool:
    """True if every topic ``f`` matches is matched by ``by`` (only '#'-suffix cover is detected)."""
    if by == "#":
        return True
    if by.endswith("/#"):
        prefix = by[:-2]
        return f == prefix or (f.startswith(prefix + "/") and "+" not in prefix)
    return f == by


def summarize(filters: Iterable[str], max_filters: int = MAX_FILTERS) -> tuple[str, ...]:
    """A sorted, deduplicated set of filters covering ``filters``, at most ``max_filters`` long.

    Filters starting with '$' are dropped (never forwarded). A filter covered by a
    ``.../#`` filter of the set is dropped. Too many: widened to ``first-level/#``
    (wildcard first levels to ``#``), then to ``#``.
    """
    unique = {f for f in filters if f and not f.startswith("$")}
    if len(unique) > max_filters:
        unique = {"#" if f.split("/", 1)[0] in ("+", "#") else f.split("/", 1)[0] + "/#" for f in unique}
        if len(unique) > max_filters:
            unique = {"#"}
    if "#" in unique:
        return ("#",)
    wide = [f for f in unique if f.endswith("/#")]
    kept = [f for f in unique if not any(w != f and _covered(f, w) for w in wide)]
    return tuple(sorted(kept))


@dataclass
class Interest:
    """One peer's filters, with a bounded per-topic cache of match results."""

    filters: tuple[str, ...] = ()
    version: int = 0
    _cache: dict[str, bool] = field(default_factory=dict, repr=False)

    def wants(self, topic: str) -> bool:
        """True if some filter matches ``topic``."""
        hit = self._cache.get(topic)
        if hit is None:
            hit = any(matches(f, topic) for f in self.filters)
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            self._cache[topic] = hit
        return hit


def encode(broker: str, filters: tuple[str, ...], version: int) -> bytes:
    """The retained interest document."""
    return json.dumps({"broker": broker, "filters": list(filters), "version": version}).encode()


def decode(payload: bytes) -> Interest:
    """Parse an interest document; an empty or malformed one means no interest."""
    try:
        data = json.loads(payload)
        filters = tuple(str(f) for f in data["filters"])
        version = int(data.get("version", 0))
    except (ValueError, TypeError, KeyError, AttributeError):
        return Interest()
    return Interest(filters, version)
