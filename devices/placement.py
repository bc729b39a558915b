"""Which of its site's brokers a device connects to: the one place devices decide.

How it works: a pinned hash (BLAKE2b, 8 bytes, big-endian) of the UTF-8 key
``{site}/{device}``, modulo the number of brokers with a non-zero weight,
sorted by id. Every process computes the same answer from the same cluster
file, whatever the order brokers are listed in and whatever PYTHONHASHSEED is.

What it does not do: weights beyond "0 owns nothing", minimal movement when
brokers change (modulo hashing moves most devices), failover. The
consistent-hashing ring (``broker.ring``, issue 3) replaces the body of
``choose_broker``; callers do not change.
"""

from __future__ import annotations

import hashlib

from broker.config import BrokerConfig, SiteConfig
from broker.errors import RingError

__all__ = ["choose_broker", "device_key"]


def device_key(site_id: str, device_id: str) -> str:
    """The ownership key of a device: ``{site}/{device}``."""
    return f"{site_id}/{device_id}"


def _stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def choose_broker(site: SiteConfig, device_id: str) -> BrokerConfig:
    """The broker of ``site`` that ``device_id`` connects to."""
    candidates = sorted((b for b in site.brokers if b.weight > 0), key=lambda b: b.id)
    if not candidates:
        raise RingError(
            f"site {site.id!r} has no broker with a non-zero weight",
            hint="give at least one broker of the site a weight > 0",
            site=site.id,
        )
    return candidates[_stable_hash(device_key(site.id, device_id)) % len(candidates)]
