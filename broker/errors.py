"""The one root error of edgemq and its subclasses, named by cause.

    EdgeMQError                      root: every error we raise on purpose
    ├── ConfigError                  the cluster file is wrong (field, value)
    ├── RingError                    a ring cannot be built or asked (no brokers, bad weight)
    ├── LinkError                    an MQTT link to another broker
    │   ├── LinkClosed               we closed it (shutdown)
    │   └── LinkBroken               the peer or network broke it (cause chained)
    ├── StoreError                   the store-and-forward buffer
    │   ├── StoreFull                capacity or disk exhausted (recoverable)
    │   └── StoreCorrupt             the file is not a usable buffer (moved aside)
    └── ClusterError                 running the cluster: supervision, start-up

Every error carries a ``hint`` for the operator and whether it ``recoverable`` by
itself (a broken link is; a bad config file is not). Foreign exceptions (amqtt,
paho, sqlite3, OSError) are translated into these once, in the shell that caught
them, and never cross package boundaries untranslated.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClusterError",
    "ConfigError",
    "EdgeMQError",
    "LinkBroken",
    "LinkClosed",
    "LinkError",
    "RingError",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
]


class EdgeMQError(Exception):
    """Root of every error edgemq raises on purpose."""

    recoverable: bool = False

    def __init__(self, message: str, *, hint: str = "", recoverable: bool | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if recoverable is not None:
            self.recoverable = recoverable
        # Context an operator needs: site, broker, seq, path, field, value...
        self.fields: dict[str, Any] = fields

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class ConfigError(EdgeMQError):
    """The cluster file is invalid; nothing is started."""


class RingError(EdgeMQError):
    """A consistent-hashing ring cannot be built or queried."""


class LinkError(EdgeMQError):
    """An MQTT link (uplink to the cloud, or a peer link) failed."""

    recoverable = True


class LinkClosed(LinkError):
    """The link was closed by us (shutdown); not retried."""

    recoverable = False


class LinkBroken(LinkError):
    """The peer or the network broke the link; retried with back-off."""


class StoreError(EdgeMQError):
    """The store-and-forward buffer failed."""


class StoreFull(StoreError):
    """The buffer is at capacity or the disk is full; new data is refused or old data dropped."""

    recoverable = True


class StoreCorrupt(StoreError):
    """The buffer file is not a usable database; it is moved aside, never deleted."""


class ClusterError(EdgeMQError):
    """Bringing the cluster up, down, or asking its status failed."""
