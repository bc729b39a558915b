"""This broker's place in its site: peer links, interest, membership and presence.

``SitePeers`` is what the edge node hangs on ``EdgeBroker.peers`` and
``EdgeBroker.presence`` (the hook protocols of ``broker.server``). It owns:

* one ``PeerLink`` per other broker of the site (forwarding by the peer's interest,
  pulling the peer's control topics);
* this broker's **interest** document: the filters its local clients subscribe to
  (peer links and probes excluded), recomputed every ``interest_interval_s`` and
  published retained on ``edgemq/{site}/{me}/interest`` when it changed;
* this broker's **state** document, retained on ``edgemq/{site}/{me}/state`` every
  ``state_interval_s``, and a live copy of every peer's (``members``);
* **presence**: a record per device that connects here, retained on
  ``edgemq/{site}/{me}/presence/{device}``, every peer's records (``table``), and
  the will check ``suppress_will``.

Copies of peers' control messages are injected into this broker, retained, under the
peer's own namespace: a client of any broker sees the whole site's membership and
presence. Peer links pull only ``edgemq/{site}/{peer}/...`` of the broker they connect
to, so a copy is never pulled on: loop-free by namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from bridge.peer_link import PeerLink
from broker import interest as interest_doc
from broker import presence as presence_doc
from broker.client_auth import ClientLogin
from broker.config import SiteConfig
from broker.hooks import UplinkTap
from broker.membership import Member, decode_state, offline_state, peer_of, state_topic
from broker.ownership import device_from_client_id
from broker.presence import OFFLINE, ONLINE, Presence, PresenceTable

__all__ = ["SitePeers"]

log = logging.getLogger(__name__)

Injector = Callable[[str, bytes, int, bool], Awaitable[None]]
INTERNAL_PREFIXES = ("peer-", "probe-", "edgemq-")
"""Client ids that are not local subscribers: peer links, ownership probes, edgemq tools."""


class SitePeers:
    """Peer links, interest, membership and presence of broker ``me`` of ``site``."""

    def __init__(
        self,
        site: SiteConfig,
        me: str,
        inject: Injector,
        *,
        local_filters: Callable[[], dict[str, list[str]]],
        local_changes: Callable[[], int] | None = None,
        state: Callable[[], dict[str, Any]],
        tap: UplinkTap | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 5.0,
        interest_interval_s: float = 0.25,
        state_interval_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        login: ClientLogin | None = None,
        on_discovered: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.login = login
        self.on_discovered = on_discovered
        self._tls_ports = {b.id: b.tls_port for b in site.brokers}
        self.site, self.me = site.id, me
        self.inject, self.local_filters, self.state, self.tap = inject, local_filters, state, tap
        self.clock = clock
        self.interest_interval_s, self.state_interval_s = interest_interval_s, state_interval_s
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._last_state = offline_state(site.id, me)
        self.links = {b.id: self._link(b.id, b.host, b.port) for b in site.brokers if b.id != me}
        self.discovered: list[str] = []
        self.table = PresenceTable()
        self.members: dict[str, Member] = {}
        self.received_counts: dict[str, list[int]] = {p: [0, 0] for p in self.links}
        self.interest: tuple[str, ...] = ()
        self.interest_version = 0
        self.local_changes = local_changes
        self._seen_changes = -1
        self._since: dict[str, float] = {}
        self._conns: dict[str, int] = {}
        self._outbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()  # (topic, payload, ours)
        self._tasks: list[asyncio.Task[None]] = []
        self._link_tasks: list[asyncio.Task[None]] = []

    def _link(self, peer: str, host: str, port: int) -> PeerLink:
        return PeerLink(
            self.site,
            self.me,
            peer,
            host,
            port,
            on_control=self._on_control,
            on_link=self._on_link,
            hello=lambda: self._last_state,
            reconnect_min_s=self._reconnect[0],
            reconnect_max_s=self._reconnect[1],
            login=self.login,
            tls_port=self._tls_ports.get(peer),
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._publish_interest(force=True)
        await self._publish_state()
        self._link_tasks = [
            asyncio.create_task(link.run(), name=f"peer-link-{link.peer}") for link in self.links.values()
        ]
        self._tasks = [
            asyncio.create_task(self._injector(), name="peer-injector"),
            asyncio.create_task(self._interest_loop(), name="peer-interest"),
            asyncio.create_task(self._state_loop(), name="peer-state"),
        ]

    async def close(self) -> None:
        """Say offline (locally and to every peer) and stop the links."""
        with contextlib.suppress(Exception):
            await self.inject(state_topic(self.site, self.me), offline_state(self.site, self.me), 1, True)
        for link in self.links.values():
            link.close()
        for task in self._tasks:
            task.cancel()
        # The link tasks end by themselves once their connection has said goodbye.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._link_tasks, return_exceptions=True), 2.0)
        for task in [*self._tasks, *self._link_tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._link_tasks, return_exceptions=True)

    # -- PeerHook ----------------------------------------------------------------------

    def origin(self, client_id: str) -> str | None:
        return peer_of(self.site, client_id)

    def received(self, origin: str, topic: str, payload: bytes, retain: bool) -> None:
        if topic == state_topic(self.site, origin):  # a hello, not forwarded traffic
            if origin not in self.links:
                self._discover(origin, payload)
            return
        counts = self.received_counts.setdefault(origin, [0, 0])
        counts[0] += 1
        counts[1] += len(payload)

    def _discover(self, peer: str, payload: bytes) -> None:
        """A broker our cluster file does not list linked to us: link back to its address.

        ``on_discovered(peer, state document)`` then tells the node (which adds it to its ring).
        """
        doc = decode_state(peer, payload).doc
        address = str(doc.get("address", ""))
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not self._link_tasks:
            return
        log.info("broker %s joined the site at %s (not in our cluster file): linking to it", peer, address)
        link = self._link(peer, host, int(port))
        self.links[peer] = link
        self.received_counts.setdefault(peer, [0, 0])
        self.discovered.append(peer)
        self._link_tasks.append(asyncio.create_task(link.run(), name=f"peer-link-{peer}"))
        if self.on_discovered is not None:
            try:
                self.on_discovered(peer, doc)
            except Exception as exc:  # the node's bookkeeping must not break the peer link
                log.warning("cannot take in broker %s: %r", peer, exc)

    def wants(self, topic: str) -> bool:
        return any(link.wants(topic) for link in self.links.values())

    def forward(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        for link in self.links.values():
            if link.wants(topic):
                link.publish(topic, payload, qos, retain)

    # -- PresenceHook ------------------------------------------------------------------

    def connected(self, client_id: str) -> None:
        device = device_from_client_id(self.site, client_id)
        if device is None:
            return
        self._conns[client_id] = self._conns.get(client_id, 0) + 1
        since = self.clock()
        self._since[client_id] = since
        self._record(device, Presence(ONLINE, self.me, since))

    def disconnected(self, client_id: str) -> None:
        device = device_from_client_id(self.site, client_id)
        if device is None or client_id not in self._conns:
            return
        self._conns[client_id] -= 1
        if self._conns[client_id] > 0:
            return  # a newer connection of this client is on
        del self._conns[client_id]
        self._since.pop(client_id, None)
        self._record(device, Presence(OFFLINE, self.me, self.clock()))

    def suppress_will(self, client_id: str) -> bool:
        device = device_from_client_id(self.site, client_id)
        since = self._since.get(client_id)
        if device is None or since is None:
            return False
        stale = self.table.suppress_will(device, self.me, since)
        if stale:
            log.info("will of %s suppressed: online at %s since", client_id, self.table.present_at(device))
        return stale

    def present_at(self, device: str) -> str | None:
        """The broker of the site ``device`` is connected to, as far as this broker knows."""
        return self.table.present_at(device)

    def _record(self, device: str, p: Presence) -> None:
        self.table.update(device, p, self.me)
        topic = presence_doc.presence_topic(self.site, self.me, device)
        self._outbox.put_nowait((topic, presence_doc.encode(p), True))  # ours: may go up too

    # -- control messages from peers (event loop) --------------------------------------

    def _on_link(self, peer: str, up: bool) -> None:
        if up:
            # The peer may have restarted: forget its records (here and the retained copies);
            # the ones it still has come back, retained, right after this.
            for device in self.table.devices_recorded_by(peer):
                self.table.update(device, None, peer)
                self._outbox.put_nowait((presence_doc.presence_topic(self.site, peer, device), b"", False))
            self.table.broker_up(peer)
        else:
            self.table.broker_down(peer)
            self.members[peer] = Member(peer, False, {"state": "offline", "broker": peer})

    def _on_control(self, peer: str, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != "edgemq" or parts[1] != self.site or parts[2] != peer:
            return
        kind = parts[3]
        if kind == "interest":
            self.links[peer].interest = interest_doc.decode(payload)
        elif kind == "state":
            member = decode_state(peer, payload)
            self.members[peer] = member
            (self.table.broker_up if member.online else self.table.broker_down)(peer)
            self._outbox.put_nowait((topic, payload, False))
        elif kind == "presence" and len(parts) == 5:
            self.table.update(parts[4], presence_doc.decode(payload, peer), peer)
            self._outbox.put_nowait((topic, payload, False))

    async def _injector(self) -> None:
        """Injects presence records and peers' copies into this broker (retained), in order.

        This broker's own presence records also go to the uplink tap if an uplink rule
        takes them (e.g. ``edgemq/+/+/presence/#``): the cloud can then merge the site's
        records by ``since`` (the per-broker buffers do not order messages across brokers).
        """
        while True:
            topic, payload, ours = await self._outbox.get()
            try:
                await self.inject(topic, payload, 1, True)
                if ours and self.tap is not None and self.tap.wants(topic):
                    await self.tap.offer(topic, payload, 1, True, f"edgemq-presence-{self.me}")
            except Exception as exc:  # one bad record must not stop presence
                log.warning("cannot publish %s: %r", topic, exc)

    # -- this broker's interest and state ----------------------------------------------

    def _local(self) -> tuple[str, ...]:
        filters = (
            f
            for f, clients in self.local_filters().items()
            if any(not c.startswith(INTERNAL_PREFIXES) for c in clients)
        )
        return interest_doc.summarize(filters)

    async def _publish_interest(self, force: bool = False) -> None:
        if self.local_changes is not None:
            changes = self.local_changes()
            if changes == self._seen_changes and not force:
                return  # nobody subscribed or unsubscribed since the last look
            self._seen_changes = changes
        current = self._local()
        if current == self.interest and not force:
            return
        self.interest = current
        self.interest_version += 1
        doc = interest_doc.encode(self.me, current, self.interest_version)
        await self.inject(interest_doc.interest_topic(self.site, self.me), doc, 1, True)

    async def _interest_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interest_interval_s)
            try:
                await self._publish_interest()
            except Exception as exc:
                log.warning("cannot publish interest: %r", exc)

    async def _publish_state(self) -> None:
        doc = {"site": self.site, "broker": self.me, "state": "online", "ts": self.clock()} | self.state()
        doc["peers"] = {p: link.state for p, link in self.links.items()}
        self._last_state = json.dumps(doc, default=str).encode()
        await self.inject(state_topic(self.site, self.me), self._last_state, 1, True)

    async def _state_loop(self) -> None:
        while True:
            await asyncio.sleep(self.state_interval_s)
            try:
                await self._publish_state()
            except Exception as exc:
                log.warning("cannot publish state: %r", exc)

    # -- stats ---------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Peer traffic and membership for the stats snapshot."""
        peers = {}
        for p, link in self.links.items():
            s = asdict(link.statistics())
            s["interest"] = len(s["interest"])
            s["received"], s["received_bytes"] = self.received_counts.get(p, [0, 0])
            s["member"] = "online" if (m := self.members.get(p)) is not None and m.online else "offline"
            peers[p] = s
        return {
            "peers": peers,
            "forwarded": sum(link.forwarded for link in self.links.values()),
            "forwarded_bytes": sum(link.forwarded_bytes for link in self.links.values()),
            "received": sum(c[0] for c in self.received_counts.values()),
            "received_bytes": sum(c[1] for c in self.received_counts.values()),
            "dropped": sum(link.dropped for link in self.links.values()),
            "interest": list(self.interest),
            "present_here": len(self._conns),
            "discovered": list(self.discovered),
        }
