"""What fleet to simulate: ``FleetConfig``, validated at the edge (pydantic, extra fields refused)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from broker.config import SiteConfig

__all__ = ["FleetConfig"]


class FleetConfig(BaseModel):
    """What fleet to simulate, against which site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: SiteConfig = Field(description="The site whose brokers the devices connect to.")
    devices: int = Field(ge=1, le=100_000, description="Number of simulated devices.")
    rate: float = Field(1.0, gt=0, le=1000, description="Telemetry messages per second, per device.")
    messages: int | None = Field(None, ge=1, description="Acknowledged messages per device, then it stops.")
    duration_s: float | None = Field(None, gt=0, description="Stop the whole fleet after this many seconds.")
    seed: int = Field(1, description="Seed of start offsets, readings and back-off jitter.")
    first_device: int = Field(1, ge=0, description="Number of the first device id (dev-0001 by default).")
    connect_batch: int = Field(50, ge=1, le=10_000, description="Devices started, and connects, at once.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive of each device connection.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Bound on one connection attempt.")
    publish_timeout_s: float = Field(10.0, gt=0, description="Bound on waiting for one PUBACK.")
    reconnect_min_s: float = Field(0.5, gt=0, description="Back-off ceiling of the first reconnect attempt.")
    reconnect_max_s: float = Field(15.0, gt=0, description="Cap on the reconnect back-off.")
    progress_interval_s: float = Field(0.5, gt=0, description="How often on_progress is called.")
    preference_n: int | None = Field(
        None, ge=1, description="How many brokers of its preference list a device walks; all of the site if unset."
    )
    probe_interval_s: float = Field(5.0, gt=0, description="Mean interval between probes of the owner while away.")
    probe_jitter: float = Field(0.5, ge=0, lt=1, description="Probe intervals are uniform in (1 ± jitter) × mean.")
    probe_timeout_s: float = Field(2.0, gt=0, description="Bound on one probe (TCP connect + CONNACK).")
    hold_down_s: float = Field(
        30.0, ge=0, description="The owner must answer every probe this long before a device goes home."
    )
    stable_s: float = Field(10.0, ge=0, description="A connection that lasted this long resets the back-off.")
    follow_ring: bool = Field(
        True, description="Follow the site's ring document (edgemq/{site}/ring) when a broker joins or leaves."
    )
    move_window_s: float = Field(
        30.0, ge=0, description="After a ring change, a device whose owner changed first probes it within this window."
    )
    passwords: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Password of each device (the device id is its username); a device without one is anonymous.",
    )
    ca_file: Path | None = Field(
        None, description="Connect to each broker's tls_port over TLS, verifying its certificate against this CA."
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> FleetConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self
