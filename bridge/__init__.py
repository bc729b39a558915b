"""Store-and-forward: the SQLite buffer (a write-ahead log), its async store, the
broker→buffer hand-off, and the MQTT link that drains it to the cloud."""

from bridge.backoff import Backoff
from bridge.buffer import Buffer, BufferStats, Record, Stored
from bridge.link import LinkStats, Uplink, state_topic
from bridge.store import Store
from bridge.tap import BufferTap

__all__ = [
    "Backoff",
    "Buffer",
    "BufferStats",
    "BufferTap",
    "LinkStats",
    "Record",
    "Store",
    "Stored",
    "Uplink",
    "state_topic",
]
