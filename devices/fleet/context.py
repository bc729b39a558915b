"""What the devices of one fleet share: settings, the site's brokers, counters, the clock and the stop.

Each device (``devices.fleet.device``) holds one of these; the runner
(``devices.fleet.run_fleet``) builds it, starts the devices and reads ``stats()``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.config import BrokerConfig
from broker.ratelog import RateLimitedLog
from devices.failover import FailoverSettings
from devices.fleet.config import FleetConfig
from devices.fleet.reports import Ack, FleetStats, Move

__all__ = ["Counters", "FleetContext"]

logger = logging.getLogger(__name__)

# Longest single sleep, so stop and deadlines are noticed promptly even at low rates.
_TICK_S = 0.25


@dataclass(slots=True)
class Counters:
    """The fleet's running totals (``FleetStats`` is their snapshot)."""

    started: int = 0
    connected: int = 0
    connected_peak: int = 0
    published: int = 0
    acked: int = 0
    commands: int = 0
    errors: int = 0
    reconnects: int = 0
    finished: int = 0
    per_broker: dict[str, int] = field(default_factory=dict)

    def connect(self, broker: str) -> None:
        """A device's connection to ``broker`` is up."""
        self.connected += 1
        self.connected_peak = max(self.connected_peak, self.connected)
        self.per_broker[broker] = self.per_broker.get(broker, 0) + 1

    def disconnect(self, broker: str) -> None:
        """A device's connection to ``broker`` is over."""
        self.connected -= 1
        self.per_broker[broker] -= 1


class FleetContext:
    """Shared by every device of a fleet; lives on one event loop."""

    def __init__(
        self,
        config: FleetConfig,
        stop: asyncio.Event,
        on_ack: Callable[[Ack], None] | None = None,
        on_move: Callable[[Move], None] | None = None,
    ) -> None:
        self.cfg = config
        self.site = config.site.id
        # One context for every device: verifies the brokers against the fleet's CA.
        self.ssl_context = (
            ssl.create_default_context(cafile=str(config.ca_file)) if config.ca_file is not None else None
        )
        self.stop = stop
        self.on_ack = on_ack
        self.on_move = on_move
        # Brokers by id; a ring document can add brokers while the fleet runs.
        self.brokers: dict[str, BrokerConfig] = {b.id: b for b in config.site.brokers}
        self.failover = FailoverSettings(
            probe_interval_s=config.probe_interval_s,
            probe_jitter=config.probe_jitter,
            hold_down_s=config.hold_down_s,
            retry_min_s=config.reconnect_min_s,
            retry_max_s=config.reconnect_max_s,
            stable_s=config.stable_s,
            move_window_s=config.move_window_s,
        )
        self.ring_topic = f"edgemq/{self.site}/ring"
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time()
        self.deadline = None if config.duration_s is None else self.started_at + config.duration_s
        self.period = 1.0 / config.rate
        self.counters = Counters()
        self.connect_slots = asyncio.Semaphore(config.connect_batch)
        # Fleet-wide, rate-limited: a broker down means hundreds of devices say the same thing.
        self.warnings = RateLimitedLog(logger, interval_s=10.0, clock=self.loop.time)
        self._aborted = False

    def now(self) -> float:
        """The event loop's clock."""
        return self.loop.time()

    def stats(self) -> FleetStats:
        """A snapshot of the counters."""
        c = self.counters
        return FleetStats(
            devices=self.cfg.devices,
            started=c.started,
            connected=c.connected,
            connected_peak=c.connected_peak,
            published=c.published,
            acked=c.acked,
            commands=c.commands,
            errors=c.errors,
            reconnects=c.reconnects,
            finished=c.finished,
            elapsed_s=self.loop.time() - self.started_at,
            per_broker={b: c.per_broker.get(b, 0) for b in self.brokers},
        )

    def abort(self) -> None:
        """The run is being torn down: every device is over, whether or not its cancellation reached it."""
        self._aborted = True

    def over(self) -> bool:
        """The fleet was stopped, aborted, or its duration passed."""
        return self._aborted or self.stop.is_set() or (self.deadline is not None and self.loop.time() >= self.deadline)

    async def sleep_until(self, when: float, interrupted: Callable[[], bool] | None = None) -> bool:
        """Sleep until ``when`` in short ticks; False if the fleet is over (or ``interrupted()``) first."""

        def cut() -> bool:
            return self.over() or (interrupted is not None and interrupted())

        while (left := when - self.loop.time()) > 0:
            if cut():
                return False
            await asyncio.sleep(min(left, _TICK_S))
        return not cut()

    def endpoint(self, broker: BrokerConfig) -> tuple[str, int]:
        """Where a device reaches ``broker``: its TLS port when the fleet uses TLS."""
        return broker.host, broker.tls_port if self.ssl_context is not None and broker.tls_port else broker.port

    def login(self, device: str) -> tuple[str | None, str | None]:
        """The device's username and password, or (None, None) for an anonymous device."""
        secret = self.cfg.passwords.get(device)
        return (device, secret.get_secret_value()) if secret is not None else (None, None)
