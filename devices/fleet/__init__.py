"""The fleet simulator: N devices in one asyncio event loop, one MQTT connection each.

Each device connects to its owner on the site's ring (``devices.placement``),
with a stable client id ``dev-{site}-{device}``, a persistent session (clean
session off) and a will ``offline`` (retained, QoS 1) on
``status/{site}/{device}``. Where it connects is decided by its failover policy
(``devices.failover``, pure): when the owner is unreachable the device walks its
preference list; while away it probes the owner (a raw MQTT CONNECT/CONNACK,
jittered intervals) and, once the owner has answered every probe for
``hold_down_s``, it finishes its in-flight message, disconnects cleanly and goes
home. Every move is recorded as a ``Move`` (time, broker, reason) in the
device's history, and passed to ``on_move``. Once connected it subscribes to
``commands/{site}/{device}/#`` (QoS 1), then publishes ``online`` (retained) on
its status topic, so ``online`` means commands reach it; it logs and counts
each command, and publishes JSON telemetry on
``telemetry/{site}/{device}/reading`` at QoS 1, ``rate`` messages/s, starting at
a seeded random offset inside the first period so a fleet's publishes are
spread evenly over time.

Ring changes: each device also subscribes to the site's ring document
(``edgemq/{site}/ring``, retained on every broker) on whichever broker it is on.
When the document describes another ring than the device uses (a broker joined
or left), the device recomputes its preference list (``FailoverPolicy.set_preference``):
if its owner did not change nothing happens; if it did, the device probes its new
owner after a seeded random delay within ``move_window_s`` and moves there after
the usual hold-down, so a new broker gets its share gradually (docs/site.md).

Delivery rule: a device has at most one telemetry message in flight; it counts
as *acknowledged* when the broker's PUBACK arrives (``on_ack`` is called then).
If the connection breaks first, the device reconnects (owner first, then down
its preference list; capped, jittered exponential back-off after a whole walk
failed) and re-sends the same bytes (same ``seq``) before anything
new: at-least-once, in order, duplicates recognisable by ``(device, seq)``. So
a device's acknowledged sequence numbers are always exactly ``1..acked``.

Everything is bounded: ``messages`` per device, ``duration_s`` for the fleet,
or ``stop`` (an ``asyncio.Event``) set by the caller; connects, publishes and
disconnects have timeouts. A device that finishes publishes ``offline``
(retained) and disconnects cleanly. Start-up is paced: devices are started in
batches of ``connect_batch``, each batch waiting for the previous one's first
connection attempts, and at most ``connect_batch`` connection attempts run at
once afterwards (reconnect storms included).

Modules: ``config`` (FleetConfig), ``reports`` (what a run reports), ``naming``
(ids and topics), ``probe`` (is a broker up?), ``context`` (what the devices
share), ``device`` (one device's connection life), ``ring_follow`` (ring
documents), ``mqtt`` (the device's MQTT client); this module runs the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from devices.failover import backoff_delay
from devices.fleet.config import FleetConfig
from devices.fleet.context import FleetContext
from devices.fleet.device import Device, next_due
from devices.fleet.naming import client_id, command_filter, device_ids, status_topic, telemetry_topic
from devices.fleet.probe import probe_broker
from devices.fleet.reports import Ack, DeviceReport, FleetResult, FleetStats, Move
from devices.fleet.ring_follow import RingDocuments
from devices.placement import choose_broker

__all__ = [
    "Ack",
    "DeviceReport",
    "FleetConfig",
    "FleetResult",
    "FleetStats",
    "Move",
    "backoff_delay",
    "client_id",
    "command_filter",
    "device_ids",
    "next_due",
    "probe_broker",
    "run_fleet",
    "status_topic",
    "telemetry_topic",
]

logger = logging.getLogger(__name__)


async def run_fleet(
    config: FleetConfig,
    on_progress: Callable[[FleetStats], None] | None = None,
    *,
    on_ack: Callable[[Ack], None] | None = None,
    on_move: Callable[[Move], None] | None = None,
    stop: asyncio.Event | None = None,
) -> FleetResult:
    """Run the fleet until every device is done, ``duration_s`` passes, or ``stop`` is set.

    ``on_progress`` gets a ``FleetStats`` after each start-up batch and every
    ``progress_interval_s``; ``on_ack`` gets every acknowledged message;
    ``on_move`` every connection, loss and move of a device. They run on the
    event loop and must not block. Connection problems are retried
    and counted, never raised; cancelling the call stops the devices abruptly
    (their wills fire), setting ``stop`` stops them cleanly.
    """
    stop = stop if stop is not None else asyncio.Event()
    fleet = FleetContext(config, stop, on_ack, on_move)
    choose_broker(config.site, "dev-0000")  # a site no device can use fails here, not per device
    ring_docs = RingDocuments(config.site)
    devices = [Device(fleet, d, ring_docs) for d in device_ids(config.first_device, config.devices)]
    progress = on_progress if on_progress is not None else (lambda _s: None)
    tasks: list[asyncio.Task[None]] = []
    ticker = asyncio.create_task(_tick(fleet, progress), name="fleet-progress")
    batch = config.connect_batch
    logger.info(
        "starting %d devices on site %s (%d brokers) in batches of %d",
        config.devices,
        fleet.site,
        len(config.site.brokers),
        batch,
    )
    try:
        for i in range(0, len(devices), batch):
            group = devices[i : i + batch]
            if fleet.over():
                break
            tasks += [asyncio.create_task(d.run(), name=f"device-{d.id}") for d in group]
            waits = [asyncio.create_task(d.first_attempt.wait()) for d in group]
            _, pending = await asyncio.wait(waits, timeout=config.connect_timeout_s + 1.0)
            for w in pending:
                w.cancel()
            progress(fleet.stats())
        s = fleet.stats()
        logger.info("fleet started: %d/%d connected after %.1fs", s.connected, s.devices, s.elapsed_s)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        # Cancelled or failed: cancel the devices, and also mark the fleet over. A device's
        # cancellation can be lost: aiomqtt's connect waits with asyncio.wait_for, which on
        # Python 3.11 returns the result instead of raising when the CONNACK and the
        # cancellation arrive in the same step; that device would otherwise run on forever.
        fleet.abort()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    final = fleet.stats()
    progress(final)
    logger.info(
        "fleet done in %.1fs: %d published, %d acknowledged, %d commands, %d errors, %d reconnects",
        final.elapsed_s,
        final.published,
        final.acked,
        final.commands,
        final.errors,
        final.reconnects,
    )
    return FleetResult(stats=final, devices=tuple(d.report() for d in devices), stopped=stop.is_set())


async def _tick(fleet: FleetContext, progress: Callable[[FleetStats], None]) -> None:
    while True:
        await asyncio.sleep(fleet.cfg.progress_interval_s)
        progress(fleet.stats())
