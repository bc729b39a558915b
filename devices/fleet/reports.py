"""What a fleet run tells its caller: progress snapshots, moves, acknowledgements, final reports."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Ack", "DeviceReport", "FleetResult", "FleetStats", "Move"]


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of the whole fleet."""

    devices: int
    started: int
    connected: int
    connected_peak: int
    published: int
    acked: int
    commands: int
    errors: int
    reconnects: int
    finished: int
    elapsed_s: float
    per_broker: dict[str, int] = field(default_factory=dict)  # devices connected to each broker now


@dataclass(frozen=True, slots=True)
class Move:
    """A device arrived at ``broker`` (or, with ``broker`` None, lost or left its connection) and why.

    ``at`` is the event loop's clock (``time.monotonic()`` under the default loop).
    """

    device: str
    at: float
    broker: str | None
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    """One telemetry message the broker acknowledged (PUBACK)."""

    device: str
    seq: int
    broker: str
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """One device at the end of a run. Its acknowledged seqs are exactly ``1..acked``."""

    device: str
    client_id: str
    broker: str
    published: int
    acked: int
    commands: int
    errors: int
    reconnects: int
    owner: str = ""
    history: tuple[Move, ...] = ()

    @property
    def acked_seqs(self) -> range:
        """The sequence numbers the broker acknowledged."""
        return range(1, self.acked + 1)


@dataclass(frozen=True, slots=True)
class FleetResult:
    """The final statistics and one report per device."""

    stats: FleetStats
    devices: tuple[DeviceReport, ...]
    stopped: bool
