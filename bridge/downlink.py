"""The downlink router: one broker of the site acts on each command, and waits with it when it must.

Every edge broker's uplink receives every command of its site from the cloud
(``commands/{site}/#``). The router, which the uplink calls instead of injecting
into the broker directly, asks the site's routing rule
(``broker.ownership.route_command``, given here as ``route``) what this broker does
with a command for ``device``:

* ``DELIVER`` (the device is connected here) or ``QUEUE`` (it is offline and this
  broker is the first alive one of its preference list): the command goes to the
  device now if it is subscribed to the topic and has nothing older waiting,
  otherwise into the :class:`~bridge.commands.CommandQueue` with the cluster
  file's time-to-live. :meth:`DownlinkRouter.flush` (called when a device connects
  or subscribes) hands queued commands over in order; expired ones are never sent.
* ``DROP``: another broker of the site acts on it (counted ``not_mine``).

QoS 0 commands are not queued (MQTT's contract for QoS 0 to an offline client):
delivered if the device is subscribed here now, else counted ``qos0_offline``.
Commands that are not for one device (a topic shorter than
``commands/{site}/{device}/...``) and retained commands go to the broker as they
are, as before the router existed.

What it does not do: decide presence or liveness (``route`` does), talk to the
cloud (the uplink does), or hold a socket. The queue's SQLite calls run on the
event loop: commands are few and each call is one small transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.commands import CommandQueue
from broker.ownership import Route

__all__ = ["DownlinkRouter", "command_device"]

log = logging.getLogger(__name__)

Inject = Callable[[str, bytes, int, bool], Awaitable[None]]


def command_device(site: str, topic: str) -> str | None:
    """The device a local command topic ``commands/{site}/{device}/...`` is for, else None."""
    parts = topic.split("/", 3)
    if len(parts) >= 4 and parts[0] == "commands" and parts[1] == site and parts[2] and parts[3]:
        return parts[2]
    return None


class DownlinkRouter:
    """The uplink's ``inject`` callback for commands; see the module docstring."""

    def __init__(
        self,
        *,
        site: str,
        queue: CommandQueue,
        inject: Inject,
        route: Callable[[str], Route],
        ready: Callable[[str, str], bool],
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self.queue = queue
        self._inject = inject
        self._route = route
        self._ready = ready
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()  # one hand-over at a time keeps a device's commands in order
        self.counts: Counter[str] = Counter()

    async def offer(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        device = command_device(self.site, topic)
        if device is None or retain:
            self.counts["passed"] += 1
            await self._inject(topic, payload, qos, retain)
            return
        decision = self._route(device)
        if decision is Route.DROP:
            self.counts["not_mine"] += 1
            log.debug("command %s: device %s is another broker's", topic, device)
            return
        async with self._lock:
            now = self._clock()
            waiting = bool(self.queue.pending(device, now=now))
            if not waiting and self._ready(device, topic):
                self.counts["delivered"] += 1
                await self._inject(topic, payload, qos, False)
                return
            if qos == 0:
                self.counts["qos0_offline"] += 1
                return
            self.queue.put(device, topic, payload, qos, False, now=now, ttl_s=self.ttl_s)
            self.counts["queued"] += 1
        if waiting:
            await self.flush(device)

    async def flush(self, device: str) -> int:
        """Hand the device's waiting commands to the broker, oldest first; return how many."""
        async with self._lock:
            sent: list[int] = []
            try:
                for cmd in self.queue.pending(device, now=self._clock()):
                    if not self._ready(device, cmd.topic):
                        break  # keep the order: nothing newer goes before it
                    await self._inject(cmd.topic, cmd.payload, cmd.qos, False)
                    sent.append(cmd.seq)
            finally:
                self.queue.delivered(sent)
            self.counts["delivered_from_queue"] += len(sent)
        if sent:
            log.info("delivered %d queued command(s) to %s", len(sent), device)
        return len(sent)

    async def run_expiry(self, interval_s: float = 1.0) -> None:
        """Delete expired commands every ``interval_s`` (counted in the queue's statistics)."""
        while True:
            n = self.queue.expire(now=self._clock())
            if n:
                log.warning("%d queued command(s) expired undelivered (ttl %g s)", n, self.ttl_s)
            await asyncio.sleep(interval_s)

    def statistics(self) -> dict[str, Any]:
        stats = self.queue.statistics(now=self._clock())
        return {
            "depth": stats.depth,
            "devices": stats.devices,
            "oldest_age_s": stats.oldest_age_s,
            "queued_total": stats.queued,
            "delivered_from_queue_total": stats.delivered,
            "expired": stats.expired,
            "overflow": stats.overflow,
            "routed": dict(self.counts),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.queue.close()
