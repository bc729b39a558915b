"""The MQTT client of one simulated device: aiomqtt's client, on the fleet's event loop."""

from __future__ import annotations

import aiomqtt

__all__ = ["DeviceClient"]


class DeviceClient(aiomqtt.Client):
    """aiomqtt's client, unchanged."""
