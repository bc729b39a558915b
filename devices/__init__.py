"""The device side: telemetry payloads, where a device connects, the fleet simulator, flow statistics."""

from devices.fleet import Ack, DeviceReport, FleetConfig, FleetResult, FleetStats, run_fleet
from devices.flow import FlowSnapshot, FlowTable, SiteFlow, SourceFlow, describe_payload
from devices.payload import PayloadError, Telemetry
from devices.placement import choose_broker

__all__ = [
    "Ack",
    "DeviceReport",
    "FleetConfig",
    "FleetResult",
    "FleetStats",
    "FlowSnapshot",
    "FlowTable",
    "PayloadError",
    "SiteFlow",
    "SourceFlow",
    "Telemetry",
    "choose_broker",
    "describe_payload",
    "run_fleet",
]
