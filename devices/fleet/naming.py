"""A simulated device's names: its id, MQTT client id and topics (pure)."""

from __future__ import annotations

__all__ = ["client_id", "command_filter", "device_ids", "status_topic", "telemetry_topic"]


def device_ids(first: int, count: int) -> list[str]:
    """``dev-0001``, ``dev-0002``... (at least four digits)."""
    return [f"dev-{i:04d}" for i in range(first, first + count)]


def client_id(site: str, device: str) -> str:
    """The stable MQTT client id of a device."""
    return f"dev-{site}-{device}"


def telemetry_topic(site: str, device: str) -> str:
    """Where a device publishes its readings."""
    return f"telemetry/{site}/{device}/reading"


def status_topic(site: str, device: str) -> str:
    """The device's retained presence (its will says ``offline``)."""
    return f"status/{site}/{device}"


def command_filter(site: str, device: str) -> str:
    """What a device subscribes to for its commands."""
    return f"commands/{site}/{device}/#"
