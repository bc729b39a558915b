"""edgemq's base package: cluster config, errors, topic rules, the ring, and the broker process.

The broker process itself (``broker.server``, built on amqtt) is not imported here, so
that devices, tools and the CLI can use config, ring and topics without loading amqtt.
"""

from broker.config import BridgeConfig, BrokerConfig, BufferConfig, CloudConfig, ClusterConfig, SiteConfig, load
from broker.errors import (
    ClusterError,
    ConfigError,
    EdgeMQError,
    LinkBroken,
    LinkClosed,
    LinkError,
    RingError,
    StoreCorrupt,
    StoreError,
    StoreFull,
)
from broker.ring import Ring, moves
from broker.topics import TopicMap, device_key, matches

__all__ = [
    "BridgeConfig",
    "BrokerConfig",
    "BufferConfig",
    "CloudConfig",
    "ClusterConfig",
    "ClusterError",
    "ConfigError",
    "EdgeMQError",
    "LinkBroken",
    "LinkClosed",
    "LinkError",
    "Ring",
    "RingError",
    "SiteConfig",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "TopicMap",
    "device_key",
    "load",
    "matches",
    "moves",
]
