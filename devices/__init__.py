"""The device side: telemetry payloads, where a device connects and fails over, the fleet simulator, flows."""

from devices.failover import FailoverPolicy, FailoverSettings
from devices.fleet import Ack, DeviceReport, FleetConfig, FleetResult, FleetStats, Move, run_fleet
from devices.flow import FlowSnapshot, FlowTable, SiteFlow, SourceFlow, describe_payload
from devices.payload import PayloadError, Telemetry
from devices.placement import choose_broker, preference, site_ring

__all__ = [
    "Ack",
    "DeviceReport",
    "FailoverPolicy",
    "FailoverSettings",
    "FleetConfig",
    "FleetResult",
    "FleetStats",
    "FlowSnapshot",
    "FlowTable",
    "Move",
    "PayloadError",
    "SiteFlow",
    "SourceFlow",
    "Telemetry",
    "choose_broker",
    "describe_payload",
    "preference",
    "run_fleet",
    "site_ring",
]
