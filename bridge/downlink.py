"""The downlink router: one broker of the site delivers each command to its device, once.

Every edge broker's uplink receives every command of its site from the cloud
(``commands/{site}/#``) and hands it here instead of to the broker. For a command
``commands/{site}/{device}/...`` the local subscribers fall in two groups:

* the **device**: a connected session whose client id is the device's
  (``dev-{site}-{device}``, ``broker.ownership.device_from_client_id``) or whose
  matching subscription names the device literally (``commands/{site}/{device}/#``:
  a plain-MQTT device with any client id);
* **observers**: every other matching subscriber (``commands/{site}/#``, a console).

If the device is here, it gets the command now (observers too). If it is not, the
observers here get it now and the site's rule decides about the device
(``route``: ``broker.ownership.route_command`` over presence and liveness): the
first alive broker of its preference list (normally its owner) keeps the command
in the :class:`~bridge.commands.CommandQueue` with the cluster file's time-to-live
and hands it to the device when it connects and subscribes here
(:meth:`DownlinkRouter.flush`, called after every SUBSCRIBE and once a second);
every other broker leaves the device alone (counted ``not_mine``). A command for a
device with older commands still waiting goes behind them (order is kept).
Expired commands are never sent.

Nothing is queued in amqtt's sessions for routed commands (``send`` reaches
connected sessions only), so a device that failed over while its owner stayed up
does not get a second copy from its old session when it comes home.

QoS 0 commands are not kept for an offline device (MQTT's contract for QoS 0):
counted ``qos0_offline``. Retained commands and topics that name no device go to the
broker as they are (``inject``), as before the router existed.

Right after start-up the broker does not know yet where the site's devices are:
its peer links come up and the peers' retained presence records arrive a moment
later, while the cloud already replays the commands its persistent session kept
while it was down. Deciding then would make it the keeper of a device that is
connected to a peer (which delivered the command when it was published): a second
copy later. So device commands wait until the site view is settled (``settled``,
from the node: every peer link up for a second) or ``settle_max_s`` has passed,
before they are routed; order is kept (the uplink hands them over one at a time).

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
from broker.ownership import Route, device_from_client_id
from broker.topics import matches

__all__ = ["DownlinkRouter", "command_device"]

log = logging.getLogger(__name__)

Inject = Callable[[str, bytes, int, bool], Awaitable[None]]
Send = Callable[[str, bytes, int, set[str]], Awaitable[int]]
Listeners = Callable[[str], list[tuple[str, str]]]


def command_device(site: str, topic: str) -> str | None:
    """The device a local command topic ``commands/{site}/{device}/...`` is for, else None."""
    parts = topic.split("/", 3)
    if len(parts) >= 4 and parts[0] == "commands" and parts[1] == site and parts[2] and parts[3]:
        return parts[2]
    return None


def _names_device(site: str, device: str, topic_filter: str) -> bool:
    levels = topic_filter.split("/", 3)
    return len(levels) >= 3 and levels[2] == device and matches("/".join(levels[:2]), f"commands/{site}")


class DownlinkRouter:
    """The uplink's ``inject`` callback for commands; see the module docstring."""

    def __init__(
        self,
        *,
        site: str,
        queue: CommandQueue,
        inject: Inject,
        send: Send,
        listeners: Listeners,
        route: Callable[[str], Route],
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        settled: Callable[[], bool] | None = None,
        settle_max_s: float = 5.0,
    ) -> None:
        self.site = site
        self.queue = queue
        self._inject = inject
        self._send = send
        self._listeners = listeners
        self._route = route
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()  # one hand-over at a time keeps a device's commands in order
        self.counts: Counter[str] = Counter()
        self._settled = settled
        self.held_at_start = 0  # commands that waited for the settled view (also counted by outcome)
        self._settle_until = time.monotonic() + settle_max_s

    def _audience(self, device: str, topic: str) -> tuple[set[str], set[str]]:
        """(the device's sessions, observers) among the connected local subscribers of ``topic``."""
        mine: set[str] = set()
        others: set[str] = set()
        for cid, topic_filter in self._listeners(topic):
            if device_from_client_id(self.site, cid) == device or _names_device(self.site, device, topic_filter):
                mine.add(cid)
            else:
                others.add(cid)
        return mine, others - mine

    async def offer(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        device = command_device(self.site, topic)
        if device is None or retain:
            self.counts["passed"] += 1
            await self._inject(topic, payload, qos, retain)
            return
        if self._settled is not None:
            await self._settle()
        async with self._lock:
            now = self._clock()
            mine, others = self._audience(device, topic)
            waiting = bool(self.queue.pending(device, now=now))
            if mine and not waiting:
                self.counts["delivered"] += 1
                await self._send(topic, payload, qos, mine | others)
                return
            if others:
                await self._send(topic, payload, qos, others)
            if not mine and self._route(device) is Route.DROP:
                self.counts["not_mine"] += 1
                log.debug("command %s: device %s is another broker's", topic, device)
                return
            if qos == 0:
                self.counts["qos0_offline"] += 1
                return
            self.queue.put(device, topic, payload, qos, False, now=now, ttl_s=self.ttl_s)
            self.counts["queued"] += 1
        if mine:
            await self.flush(device)

    async def _settle(self) -> None:
        """Wait (once, after start-up) until the site view is settled or the wait has run out."""
        settled = self._settled
        if settled is None:
            return
        held = False
        while not settled() and time.monotonic() < self._settle_until:
            held = True
            await asyncio.sleep(0.1)
        if held:
            self.held_at_start += 1
        self._settled = None  # settled for good: later changes are followed by presence

    async def flush(self, device: str) -> int:
        """Hand the device's waiting commands to its sessions here, oldest first; return how many."""
        async with self._lock:
            sent: list[int] = []
            try:
                for cmd in self.queue.pending(device, now=self._clock()):
                    mine, _ = self._audience(device, cmd.topic)
                    if not mine:
                        break  # keep the order: nothing newer goes before it
                    await self._send(cmd.topic, cmd.payload, cmd.qos, mine)
                    sent.append(cmd.seq)
            finally:
                self.queue.delivered(sent)
            self.counts["delivered_from_queue"] += len(sent)
        if sent:
            log.info("delivered %d queued command(s) to %s", len(sent), device)
        return len(sent)

    async def flush_all(self) -> int:
        """Flush every device with waiting commands (those not subscribed here keep waiting)."""
        return sum([await self.flush(device) for device in self.queue.devices()])

    def subscribed(self, client_id: str) -> None:
        """A client subscribed: hand over what may now be deliverable (the broker's hook; never blocks)."""
        if self.queue.devices():
            task = asyncio.get_running_loop().create_task(self.flush_all(), name=f"commands-flush-{client_id}")
            task.add_done_callback(_log_failure)

    async def run(self, interval_s: float = 1.0) -> None:
        """Every ``interval_s``: delete expired commands, flush devices that came back."""
        while True:
            n = self.queue.expire(now=self._clock())
            if n:
                log.warning("%d queued command(s) expired undelivered (ttl %g s)", n, self.ttl_s)
            await self.flush_all()
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
            "held_at_start": self.held_at_start,
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.queue.close()


def _log_failure(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("handing queued commands over failed: %r", task.exception())
