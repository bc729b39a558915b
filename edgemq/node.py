"""Process entry points: the cloud broker, and an edge node (broker + buffer + bridge).

This is the composition root for one OS process: it wires the amqtt-based broker
(``broker.server``), the store-and-forward buffer (``bridge.store``) and the cloud
link (``bridge.link``), writes a stats snapshot for ``cluster status`` every
second, and shuts down cleanly on SIGTERM/SIGINT (the buffer is flushed and
closed; anything unacknowledged upstream stays in it for the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from bridge.commands import CommandQueue
from bridge.downlink import DownlinkRouter
from bridge.link import Uplink, stats_topic
from bridge.site_peers import SitePeers
from bridge.store import Store
from bridge.tap import BufferTap
from broker.client_auth import site_login, uplink_cloud
from broker.config import BrokerConfig, ClusterConfig, SiteConfig
from broker.limits import LIMITS_ENV, BrokerLimits
from broker.ownership import (
    Decision,
    OwnershipCount,
    Route,
    admit,
    device_from_client_id,
    ring_document,
    ring_topic,
    route_command,
)
from broker.ring import Ring
from broker.security import security_plugins
from broker.server import EdgeBroker, amqtt_config
from broker.session_store import SessionStore
from broker.tls import broker_listeners, listeners
from broker.topics import TopicMap
from edgemq import metrics

__all__ = [
    "LatestSnapshot",
    "buffer_path",
    "component_name",
    "run_cloud",
    "run_edge",
    "stats_path",
    "write_json_atomic",
]

log = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return importlib.metadata.version("edgemq")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


STATS_INTERVAL_S = 1.0
_VERSION = _package_version()


def component_name(site: str | None = None, broker: str | None = None) -> str:
    """Name of a component in the run directory: 'cloud' or '<site>.<broker>'."""
    return "cloud" if site is None else f"{site}.{broker}"


def stats_path(cfg: ClusterConfig, name: str) -> Path:
    """Where a component writes its stats snapshot."""
    return cfg.run_dir / "stats" / f"{name}.json"


def sessions_path(cfg: ClusterConfig, site: str, broker: str) -> Path:
    """The SQLite file of one edge broker's persistent sessions (their subscriptions)."""
    return cfg.run_dir / "data" / site / f"{broker}.sessions.sqlite3"


def commands_path(cfg: ClusterConfig, site: str, broker: str) -> Path:
    """The SQLite file of one edge broker's queue of commands for offline devices."""
    return cfg.run_dir / "data" / site / f"{broker}.commands.sqlite3"


def broker_client_online(broker: EdgeBroker, site: str, device: str) -> bool:
    """True if the device's own client id (``dev-{site}-{device}``) is connected to ``broker``."""
    return broker.is_connected(f"dev-{site}-{device}")


def buffer_path(cfg: ClusterConfig, site: str, broker: str) -> Path:
    """The SQLite buffer file of one edge broker (one file per broker, on local disk)."""
    return cfg.run_dir / "data" / site / f"{broker}.sqlite3"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


class LatestSnapshot:
    """The last snapshot the stats loop built: what the metrics endpoint serves.

    The metrics HTTP server runs in its own thread; it reads this (a reference swap
    is atomic) instead of calling ``snapshot()``, which walks the broker's sessions
    and must only run on the event loop.
    """

    def __init__(self) -> None:
        self.value: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any] | None:
        return self.value


Publisher = Callable[[dict[str, Any]], Awaitable[None]]


async def _stats_loop(
    path: Path, snapshot: Callable[[], dict[str, Any]], latest: LatestSnapshot, publish: Publisher | None = None
) -> None:
    while True:
        data = snapshot()
        latest.value = data
        try:
            write_json_atomic(path, data)
        except OSError as exc:
            log.warning("cannot write stats %s: %s", path, exc)
        if publish is not None:
            try:
                await publish(data)
            except Exception as exc:  # a local publish failing must not stop the stats file
                log.warning("cannot publish stats locally: %r", exc)
        await asyncio.sleep(STATS_INTERVAL_S)


def _start_metrics(
    mqtt_port: int, port: int | None, latest: LatestSnapshot, configured: int | None = None
) -> metrics.MetricsServer | None:
    """The process's metrics endpoint (``port`` from the command line; None: EDGEMQ_METRICS_PORT,
    else the cluster file's ``configured`` port, else derived from the MQTT port)."""
    try:
        chosen = metrics.metrics_port(mqtt_port, configured=configured) if port is None else port
    except ValueError as exc:
        log.warning("bad %s (%s): metrics disabled", metrics.ENV_PORT, exc)
        return None
    if chosen is None or chosen < 0:
        log.info("metrics disabled")
        return None
    return metrics.serve(latest, chosen)


class _SiteRing:
    """The site's ring as this broker knows it: its cluster file's brokers plus those that joined since.

    A broker that is not in the file and links to us (``SitePeers`` discovers it from its
    state document: address, weight) joins the ring; nobody ever leaves it while we run (a
    broker that goes offline has failed, its devices fail over; removal is a restart with
    the new cluster file, docs/site.md).
    """

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self.ring = Ring((b.id, b.weight) for b in site.brokers)

    def join(self, broker_id: str, state: dict[str, Any]) -> BrokerConfig | None:
        """Add ``broker_id`` from its state document; None if known already or unusable."""
        if broker_id in self.ring:
            return None
        host, _, port = str(state.get("address", "")).rpartition(":")
        try:
            b = BrokerConfig(id=broker_id, host=host, port=int(port), weight=float(state.get("weight", 1.0)))
            ring = self.ring.with_broker(b.id, b.weight)
        except (ValueError, TypeError):  # pydantic's ValidationError and RingError are ValueErrors
            return None
        self.site = self.site.model_copy(update={"brokers": [*self.site.brokers, b]})
        self.ring = ring
        return b


class _Ownership:
    """Owned / foreign / unknown among a broker's connected clients (owners cached per client id)."""

    def __init__(self, ring: _SiteRing, broker_id: str) -> None:
        self.site = ring.site.id
        self.broker = broker_id
        self.site_ring = ring
        self.ring = ring.ring
        self._owner: dict[str, str | None] = {}

    def count(self, client_ids: list[str]) -> OwnershipCount:
        owned = foreign = unknown = 0
        if len(self._owner) > 100_000 or self.ring is not self.site_ring.ring:
            self.ring = self.site_ring.ring  # a broker joined: owners change
            self._owner.clear()
        for cid in client_ids:
            if cid not in self._owner:
                device = device_from_client_id(self.site, cid)
                self._owner[cid] = None if device is None else self.ring.owner(f"{self.site}/{device}")
            owner = self._owner[cid]
            if owner is None:
                unknown += 1
            elif owner == self.broker:
                owned += 1
            else:
                foreign += 1
        return OwnershipCount(owned, foreign, unknown)


class _PeerLiveness:
    """Which brokers of the site are up right now, as this broker's peer links see them.

    Feeds the ownership admission decision and command routing: a device is refused
    (policy ``refuse``) only while its owner is up. A peer counts as up while this
    broker's MQTT link to it (``bridge/peer_link.py``) is connected: the link drops at
    once when the peer's process dies (its socket closes), and within the link's
    keep-alive (``peer_link.KEEPALIVE_S`` x 1.5) when the peer hangs or the network
    between them does. Links to brokers that join the running site are added by
    ``SitePeers`` itself. Unknown counts as down: before the links are up (start-up),
    or while a peer refuses the link, its devices are admitted here.
    """

    def __init__(self) -> None:
        self._peers: SitePeers | None = None

    def follow(self, peers: SitePeers) -> None:
        """Take liveness from these peer links from now on."""
        self._peers = peers

    @property
    def alive(self) -> frozenset[str]:
        if self._peers is None:
            return frozenset()
        return frozenset(p for p, link in self._peers.links.items() if link.state == "up")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _broker_snapshot(broker: EdgeBroker, name: str, address: str, started: float) -> dict[str, Any]:
    c = broker.counters
    return {
        "component": name,
        "pid": os.getpid(),
        "address": address,
        "started": started,
        "ts": time.time(),
        "clients": broker.connected_clients(),
        "messages_in": c.messages_in,
        "messages_in_by_qos": {str(q): n for q, n in enumerate(c.messages_in_by_qos)},
        "messages_out": c.messages_out,
        "messages_out_by_qos": {str(q): n for q, n in enumerate(c.messages_out_by_qos)},
        "dropped_out": c.dropped_out,
        "dropped_in": c.dropped_in,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
    }


def open_store(cfg: ClusterConfig, path: Path) -> Store:
    """The store-and-forward buffer at ``path`` with every [buffer] setting of the cluster file
    (the edge node and the standalone bridge open it the same way)."""
    b = cfg.buffer
    return Store.open(
        path,
        max_messages=b.max_messages,
        max_bytes=b.max_bytes,
        ttl_s=b.ttl_s,
        durability=b.durability,
        commit_interval_s=b.commit_interval_s,
        expire_interval_s=b.expire_interval_s,
        min_free_bytes=b.min_free_bytes,
    )


UVLOOP_ENV = "EDGEMQ_UVLOOP"


def run_node(main: Coroutine[Any, Any, None]) -> None:
    """Run a node's coroutine to completion on uvloop, or on asyncio's loop if $EDGEMQ_UVLOOP is 0/off.

    uvloop's transports, handles and selector are C: the broker's per-packet loop overhead
    (benchmarks/profile_notes.md). Falls back to asyncio if uvloop cannot be imported.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if os.environ.get(UVLOOP_ENV, "1").lower() not in ("0", "off", "false", "no"):
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: running on asyncio's event loop")
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def broker_limits(cfg: ClusterConfig) -> BrokerLimits:
    """The cluster file's [limits], overridden field by field by $EDGEMQ_BROKER_LIMITS (JSON) if set."""
    base = BrokerLimits(**cfg.limits.model_dump())
    if not os.environ.get(LIMITS_ENV):
        return base
    overrides = BrokerLimits.from_env()  # validates names and values
    changed = {k: v for k, v in dataclasses.asdict(overrides).items() if k in json.loads(os.environ[LIMITS_ENV])}
    return dataclasses.replace(base, **changed)


async def run_cloud(cfg: ClusterConfig, *, metrics_port: int | None = None) -> None:
    """Run the embedded cloud broker until signalled.

    ``metrics_port``: where /metrics listens (None: EDGEMQ_METRICS_PORT, else MQTT port + 1000; -1: off).
    """
    name = component_name()
    host, port = cfg.cloud.host, cfg.cloud.port
    config = amqtt_config(host, port)
    config["listeners"] = listeners(cfg.security.tls, host, port, cfg.cloud.tls_port)
    config["plugins"] = security_plugins(cfg.security, site=None)
    broker = EdgeBroker(config, limits=broker_limits(cfg))
    await broker.start()
    started = time.time()
    log.info(
        "cloud broker listening on %s:%s%s",
        host,
        port,
        f", TLS on {cfg.cloud.tls_port}" if cfg.security.tls and cfg.cloud.tls_port else "",
    )
    latest = LatestSnapshot()
    server = _start_metrics(port, metrics_port, latest, cfg.cloud.metrics_port)

    def snapshot() -> dict[str, Any]:
        data = _broker_snapshot(broker, name, f"{host}:{port}", started)
        data["broker"] = name
        data["metrics"] = server.url if server else None
        return data

    stats = asyncio.create_task(_stats_loop(stats_path(cfg, name), snapshot, latest), name="stats")
    try:
        await _until_signalled()
    finally:
        stats.cancel()
        log.info("cloud broker shutting down")
        if server is not None:
            server.close()
        await broker.shutdown()


async def run_edge(cfg: ClusterConfig, site_id: str, broker_id: str, *, metrics_port: int | None = None) -> None:
    """Run one edge node (amqtt broker + durable buffer + cloud link) until signalled.

    The stats snapshot also goes, retained, to this broker's own
    ``edgemq/{site}/{broker}/stats`` (every second; never uplinked), so a dashboard at
    the site sees the backlog grow while the uplink is down. ``metrics_port`` as in run_cloud.
    """
    from bridge.buffer import Record

    site, bcfg = cfg.locate(f"{site_id}/{broker_id}")
    name = component_name(site.id, bcfg.id)
    path = buffer_path(cfg, site.id, bcfg.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    bufcfg = cfg.buffer
    async with open_store(cfg, path) as store:
        tap = BufferTap(TopicMap.build(cfg.bridge.uplink, site.id), store, Record, durability=bufcfg.durability)
        config = amqtt_config(bcfg.host, bcfg.port)
        config["listeners"] = broker_listeners(cfg.security.tls, bcfg)
        config["plugins"] = security_plugins(cfg.security, site=site.id)
        liveness = _PeerLiveness()  # follows the peer links once they exist (below)
        ring = _SiteRing(site)  # grows when a broker joins the running site

        def decide(client_id: str) -> Decision:
            device = device_from_client_id(site.id, client_id)
            key = f"{site.id}/{device}" if device is not None else None
            return admit(ring.ring, key, bcfg.id, liveness.alive, site.ownership_policy)

        broker = EdgeBroker(config, tap=tap, limits=broker_limits(cfg), admission=decide)
        # Persistent sessions survive a restart of the gateway (their subscriptions; commands
        # for offline devices are kept by the command queue below).
        broker.session_store = SessionStore.open(sessions_path(cfg, site.id, bcfg.id))
        await broker.start()
        if restored := broker.restore_sessions():
            log.info("restored %d persistent session(s) from %s", restored, broker.session_store.path)
        started = time.time()
        ownership = _Ownership(ring, bcfg.id)

        def member_state() -> dict[str, Any]:
            own = ownership.count(broker.client_ids())
            return {
                "version": _VERSION,
                "address": f"{bcfg.host}:{bcfg.port}",
                "weight": bcfg.weight,
                "since": started,
                "owned": own.owned,
                "clients": broker.connected_clients(),
                "uplink": link.statistics().state,
                "backlog": store.statistics().depth_messages,
            }

        async def publish_ring() -> None:
            # The site's ring, retained on every broker: how devices find their owner (and follow a change).
            await broker.inject(ring_topic(site.id), json.dumps(ring_document(ring.site)).encode(), 1, retain=True)

        ring_tasks: set[asyncio.Task[None]] = set()

        def joined(peer: str, state: dict[str, Any]) -> None:
            if (added := ring.join(peer, state)) is None:
                return
            log.info(
                "broker %s (weight %g) joined %s: now in the ring; its devices move to it", peer, added.weight, site.id
            )
            task = asyncio.create_task(publish_ring(), name="ring-document")
            ring_tasks.add(task)
            task.add_done_callback(ring_tasks.discard)

        # Site peering (docs/site.md): peer links, interest, membership, presence.
        peers = SitePeers(
            site,
            bcfg.id,
            broker.inject,
            local_filters=broker.subscribed_filters,
            local_changes=lambda: broker.subscription_changes,
            state=member_state,
            tap=tap,
            login=site_login(cfg, "peer", site.id),
            on_discovered=joined,
        )
        broker.peers = peers
        broker.presence = peers
        liveness.follow(peers)

        # Commands from the cloud: one broker of the site delivers each to its device, and the
        # device's keeper queues it (durably, with a time-to-live) while it is offline.
        def command_route(device: str) -> Route:
            here = bcfg.id if broker_client_online(broker, site.id, device) else None
            return route_command(
                ring.ring, f"{site.id}/{device}", bcfg.id, here or peers.present_at(device), liveness.alive
            )

        site_view: dict[str, float | None] = {"all_up_since": None}

        def site_view_settled() -> bool:
            # Every peer link up for a second: the peers' retained presence records are in.
            if any(link.state != "up" for link in peers.links.values()):
                site_view["all_up_since"] = None
                return False
            since = site_view["all_up_since"] = site_view["all_up_since"] or time.monotonic()
            return time.monotonic() - since >= 1.0

        router = DownlinkRouter(
            site=site.id,
            queue=CommandQueue.open(
                commands_path(cfg, site.id, bcfg.id),
                max_commands=cfg.bridge.max_queued_commands,
                durability=bufcfg.durability,
            ),
            inject=broker.inject,
            send=broker.send_to,
            listeners=broker.listeners_of,
            route=command_route,
            ttl_s=cfg.bridge.command_ttl_s,
            settled=site_view_settled,
        )
        broker.on_subscribed = router.subscribed
        await publish_ring()
        log.info("edge broker %s/%s listening on %s:%s, buffer %s", site.id, bcfg.id, bcfg.host, bcfg.port, path)
        latest = LatestSnapshot()
        server = _start_metrics(bcfg.port, metrics_port, latest, bcfg.metrics_port)
        local_stats = stats_topic(site.id, bcfg.id)

        def snapshot() -> dict[str, Any]:
            data = _broker_snapshot(broker, name, f"{bcfg.host}:{bcfg.port}", started)
            data["site"], data["broker"] = site.id, bcfg.id
            data["metrics"] = server.url if server else None
            c = broker.counters
            data["admission"] = {
                "owned": c.admission_owned,
                "warned": c.admission_warned,
                "refused": c.admission_refused,
                "alive_peers": sorted(liveness.alive),
            }
            own = ownership.count(broker.client_ids())
            data["ownership"] = {"owned": own.owned, "foreign": own.foreign, "unknown": own.unknown}
            data["uplink"] = dataclasses.asdict(link.statistics())
            data["buffer"] = dataclasses.asdict(store.statistics())
            data["buffer_path"] = str(path)
            data["append_failures"] = tap.failed
            data["uplink_refused"] = broker.counters.uplink_refused
            data["site_peers"] = peers.statistics() | {"wills_suppressed": broker.counters.wills_suppressed}
            data["commands"] = router.statistics()
            return data

        link = Uplink(
            cloud=uplink_cloud(cfg, site.id),
            bridge=cfg.bridge,
            site=site.id,
            broker_id=bcfg.id,
            store=store,
            inject=router.offer,
            stats=snapshot,
            stats_interval_s=STATS_INTERVAL_S,
        )

        async def publish_locally(data: dict[str, Any]) -> None:
            await broker.inject(local_stats, json.dumps(data, default=str).encode(), 0, True)

        link_task = asyncio.create_task(link.run(), name=f"uplink-{site.id}-{bcfg.id}")
        await peers.start()
        commands_task = asyncio.create_task(router.run(), name="commands")
        stats = asyncio.create_task(_stats_loop(stats_path(cfg, name), snapshot, latest, publish_locally), name="stats")
        try:
            # The link never ends by itself; if it does, that is a bug: exit non-zero so the
            # supervisor restarts us (the buffer keeps everything not yet acknowledged).
            signalled = asyncio.create_task(_until_signalled(), name="signals")
            done, _ = await asyncio.wait({signalled, link_task}, return_when=asyncio.FIRST_COMPLETED)
            if link_task in done:
                signalled.cancel()
                exc = link_task.exception()
                log.critical("uplink task ended unexpectedly: %r", exc)
                raise SystemExit(3)
        finally:
            log.info("edge broker %s/%s shutting down", site.id, bcfg.id)
            with contextlib.suppress(Exception):
                await peers.close()
            for task in (stats, link_task, commands_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if server is not None:
                server.close()
            await broker.shutdown()
            with contextlib.suppress(OSError):
                write_json_atomic(stats_path(cfg, name), snapshot() | {"stopped": True})
            router.close()
            broker.session_store.close()
