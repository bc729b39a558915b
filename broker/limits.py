"""Per-broker limits against hostile or broken clients, with safe defaults.

``BrokerLimits`` is a plain dataclass so that ``broker.server`` does not depend on the
cluster file's models; the cluster file will grow a ``[limits]`` section with the same
field names. Until then ``BrokerLimits.from_env()`` lets a test (or an operator) override
fields through ``EDGEMQ_BROKER_LIMITS``, a JSON object such as
``{"max_packet_size": 65536}``; unknown names are an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from broker.errors import ConfigError

__all__ = ["LIMITS_ENV", "BrokerLimits"]

LIMITS_ENV = "EDGEMQ_BROKER_LIMITS"

_ZERO_MEANS_UNBOUNDED = frozenset({"max_queued_bytes"})


@dataclass(frozen=True)
class BrokerLimits:
    """What one broker process accepts from its clients."""

    max_packet_size: int = 1024 * 1024
    """Largest MQTT packet (fixed header excluded) accepted; larger closes the connection unread."""
    connect_timeout_s: float = 10.0
    """Time a new connection has to deliver its CONNECT packet."""
    max_connections: int = 10_000
    """Open TCP connections; further ones are closed at once (slots always come back)."""
    keepalive_factor: float = 1.5
    """A client silent for this many times its keep-alive is disconnected and its will published."""
    max_queued_messages: int = 1000
    """QoS 1/2 messages queued per session (offline, or behind a full in-flight window); oldest dropped beyond."""
    max_queued_bytes: int = 16 * 1024 * 1024
    """Payload bytes queued per session (same queue as ``max_queued_messages``); oldest dropped beyond; 0: no bound."""
    max_inflight_messages: int = 20
    """Outgoing QoS 1/2 messages unacknowledged per client; further ones wait in its queue (Mosquitto: 20)."""
    max_awaiting_rel: int = 20
    """Incoming QoS 2 messages per session awaiting the client's PUBREL; beyond, one is acknowledged and dropped."""
    max_write_buffer: int = 1024 * 1024
    """Bytes a client's socket has not taken yet above which QoS 0 messages to it are dropped."""
    max_topic_length: int = 65535
    """Longest topic name or filter, in bytes (the protocol's own ceiling by default)."""
    max_topic_levels: int = 128
    """Most '/'-separated levels in a topic name or filter."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"broker limit {f.name} must be a positive number, got {value!r}")
            if value == 0 and f.name not in _ZERO_MEANS_UNBOUNDED:
                raise ConfigError(f"broker limit {f.name} must be a positive number, got {value!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> BrokerLimits:
        """Defaults, overridden by the JSON object in ``EDGEMQ_BROKER_LIMITS`` if set."""
        raw = (os.environ if environ is None else environ).get(LIMITS_ENV)
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"{LIMITS_ENV} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{LIMITS_ENV} must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{LIMITS_ENV}: unknown limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)
