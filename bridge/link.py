"""The bridge's MQTT link to the cloud: uplink drain from the buffer, downlink commands.

One MQTT connection per edge broker (client id ``edgemq-bridge-{site}-{broker}``,
persistent session) carries both directions, as Mosquitto's bridge does. It is
edgemq's own lean client: :mod:`bridge.wire` (the MQTT 3.1.1/5 codec) under
:mod:`bridge.upstream` (a thin asyncio protocol). paho/aiomqtt cost 30-40 % of the
edge node's CPU during a drain (docs/buffer.md, "Drain performance").

Uplink, top-down (Litestream style): progress is a *position* — the last buffer
seq read for the connection. The forwarder reads a batch of rows after that
position in seq order, encodes as many PUBLISH packets as the in-flight window
(and the optional rate limit) allows and hands them to the transport in **one**
write; PUBACKs are parsed in ``data_received`` and the seqs acknowledged during
one event-loop turn go to ``store.ack`` together, which deletes the rows. When
the connection breaks, in-flight publishes are abandoned and the position
restarts at 0: everything not yet acknowledged is re-sent from the oldest, in
order (at-least-once; duplicates carry the same stable id). It wakes when the
buffer commits something new, or on a ticker. One watchdog task breaks the link
when the oldest unacknowledged publish has waited ``puback_timeout_s`` (30 s).

Live data and backlog share this one ordered path: a message that arrives during
a drain is sent after everything older than it (see docs/guarantees.md).

Downlink: messages arriving on the downlink filters are injected into the local
broker (``inject``), which never feeds them back to the uplink; a QoS 1 command is
acknowledged to the cloud only after its injection (at-least-once).

State is published retained on ``edgemq/{site}/{broker}/state`` at the cloud,
with a will that says offline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bridge import wire
from bridge.backoff import Backoff
from bridge.inflight import InflightWindow
from bridge.upstream import ConnectSpec, Upstream
from broker.config import BridgeConfig, CloudConfig
from broker.errors import LinkBroken
from broker.ratelog import RateLimitedLog
from broker.topics import TopicMap

__all__ = ["LinkStats", "StoreLike", "StoredLike", "Uplink", "state_topic"]

log = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 30.0
HEALTHY_AFTER_S = 10.0
#: Rows read from the buffer per read; the window bounds what is actually in flight.
READ_BATCH = 1000
#: The id user property of every uplink message over MQTT 5.
ID_PROPERTY = "edgemq-id"


class StoredLike(Protocol):
    """A buffered message as the link needs it."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class StoreLike(Protocol):
    """The parts of the buffer's async store the link uses.

    Optional: ``uplink_counters() -> (sent_high, resent)`` and
    ``note_uplink(sent_high, resent)``, which persist the re-send count across restarts.
    """

    async def read(self, after_seq: int, limit: int) -> list[Any]: ...
    def ack(self, seqs: list[int]) -> None: ...
    async def wait_for_data(self, after_seq: int, timeout: float) -> bool: ...


Injector = Callable[[str, bytes, int, bool], Awaitable[None]]


def state_topic(site: str, broker: str) -> str:
    """Retained cluster-state topic of one edge broker."""
    return f"edgemq/{site}/{broker}/state"


def stats_topic(site: str, broker: str) -> str:
    """Retained metrics-snapshot topic of one edge broker (published every stats_interval_s)."""
    return f"edgemq/{site}/{broker}/stats"


def ssl_context(cloud: CloudConfig) -> ssl.SSLContext | None:
    """The uplink's TLS context: the cloud's certificate and name verified unless ``insecure``."""
    t = cloud.tls
    if t is None:
        return None
    ctx = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
    if t.cert_file:
        ctx.load_cert_chain(str(t.cert_file), str(t.key_file) if t.key_file else None)
    if t.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True)
class LinkStats:
    """Snapshot of the link. ``resent`` counts since the buffer file was created (persisted)."""

    state: str
    connects: int
    disconnects: int
    forwarded: int
    resent: int
    inflight: int
    commands_down: int
    last_error: str | None
    refused_upstream: int = 0


class Uplink:
    """Runs the cloud link of one edge broker until cancelled."""

    def __init__(
        self,
        *,
        cloud: CloudConfig,
        bridge: BridgeConfig,
        site: str,
        broker_id: str,
        store: StoreLike,
        inject: Injector,
        rng: random.Random | None = None,
        stats: Callable[[], dict[str, Any]] | None = None,
        stats_interval_s: float = 10.0,
    ) -> None:
        self.cloud = cloud
        self.bridge = bridge
        self.site = site
        self.broker_id = broker_id
        self.store = store
        self.inject = inject
        self.stats = stats
        self.stats_interval_s = stats_interval_s
        self.uplink_map = TopicMap.build(bridge.uplink, site)
        self.downlink_map = TopicMap.build(bridge.downlink, site)
        self.backoff = Backoff(bridge.reconnect_min_s, bridge.reconnect_max_s, rng or random.Random())
        self._ratelog = RateLimitedLog(log)
        self.state = "starting"
        self.connects = 0
        self.disconnects = 0
        self.forwarded = 0
        self.resent = 0
        self.commands_down = 0
        self.refused_upstream = 0
        self.last_error: str | None = None
        self._sent_high = 0
        self._state_changed: Callable[[str], None] | None = None
        #: A PUBACK not received within this long means the link is broken.
        self.puback_timeout_s = PUBACK_TIMEOUT_S
        self._window = InflightWindow(bridge.inflight)
        self._acked: list[int] = []  # seqs PUBACKed during this loop turn
        self._ack_flush_scheduled = False
        self._room: asyncio.Future[None] | None = None  # set when a PUBACK frees the window
        self._routes: dict[str, tuple[str, int]] = {}  # local topic -> (remote topic, qos)
        self._counters_loaded = False

    # ---- public ---------------------------------------------------------------------------
    def statistics(self) -> LinkStats:
        """Frozen snapshot of the link's counters."""
        return LinkStats(
            state=self.state,
            connects=self.connects,
            disconnects=self.disconnects,
            forwarded=self.forwarded,
            resent=self.resent,
            inflight=len(self._window),
            commands_down=self.commands_down,
            last_error=self.last_error,
            refused_upstream=self.refused_upstream,
        )

    def message_id(self, seq: int) -> str:
        """The stable id of a buffered message: ``{site}/{broker}/{seq}``."""
        return f"{self.site}/{self.broker_id}/{seq}"

    async def run(self) -> None:
        """Connect, serve, and reconnect with back-off, until cancelled."""
        self._load_counters()
        while True:
            self._set_state("connecting")
            started = time.monotonic()
            try:
                await self._serve_once()
            except asyncio.CancelledError:
                self._set_state("closed")
                raise
            except (LinkBroken, OSError, ssl.SSLError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._ratelog.warning(
                    "link-down",
                    "uplink %s/%s to %s:%s down: %s",
                    self.site,
                    self.broker_id,
                    self.cloud.host,
                    self.cloud.port,
                    self.last_error,
                )
            if self.state == "connected":
                self.disconnects += 1
            if time.monotonic() - started > HEALTHY_AFTER_S:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self._set_state("backoff")
            await asyncio.sleep(delay)

    # ---- one connection -------------------------------------------------------------------
    def connect_spec(self) -> ConnectSpec:
        """What the uplink's CONNECT says and where it dials."""
        v5 = self.cloud.protocol == "5"
        password = os.environ.get(self.cloud.password_env) if self.cloud.password_env else None
        offline = json.dumps({"site": self.site, "broker": self.broker_id, "state": "offline"})
        return ConnectSpec(
            host=self.cloud.host,
            port=self.cloud.port,
            client_id=f"edgemq-bridge-{self.site}-{self.broker_id}",
            version=wire.MQTT5 if v5 else wire.MQTT311,
            keepalive=self.cloud.keepalive_s,
            username=self.cloud.username,
            password=password,
            will=wire.Will(state_topic(self.site, self.broker_id), offline.encode(), qos=1, retain=True),
            clean=False,  # persistent session: commands queued for us while we were away
            session_expiry=0xFFFFFFFF if v5 else None,
            ssl_context=ssl_context(self.cloud),
        )

    async def _serve_once(self) -> None:
        conn = await Upstream.open(self.connect_spec())
        try:
            self.connects += 1
            self._set_state("connected")
            log.info("uplink %s/%s connected to %s:%s", self.site, self.broker_id, self.cloud.host, self.cloud.port)
            queue: asyncio.Queue[wire.Publish] = asyncio.Queue()
            conn.on_message = queue.put_nowait
            online = json.dumps({"site": self.site, "broker": self.broker_id, "state": "online", "since": time.time()})
            await conn.publish(state_topic(self.site, self.broker_id), online.encode(), qos=1, retain=True)
            filters = [(f, min(q, 1)) for f, q in self.downlink_map.remote_filters()]
            if filters:
                codes = await conn.subscribe(filters)
                for (topic_filter, _), code in zip(filters, codes, strict=False):
                    if code >= 0x80:
                        log.warning(
                            "uplink %s/%s: the cloud refused the subscription %s (code %#04x)",
                            self.site,
                            self.broker_id,
                            topic_filter,
                            code,
                        )
            # Every task shares the connection: the first to fail ends it, and its own
            # exception (not an ExceptionGroup) goes to run()'s reconnect logic.
            closed = asyncio.create_task(conn.wait_closed(), name=f"uplink-closed-{self.broker_id}")
            tasks: list[asyncio.Task[Any]] = [
                closed,
                asyncio.create_task(self._forward(conn), name=f"uplink-forward-{self.broker_id}"),
                asyncio.create_task(self._watchdog(), name=f"uplink-watchdog-{self.broker_id}"),
                asyncio.create_task(self._downlink(conn, queue), name=f"downlink-{self.broker_id}"),
                asyncio.create_task(conn.keepalive(self._keepalive_s(conn)), name=f"keepalive-{self.broker_id}"),
            ]
            if self.stats is not None:
                tasks.append(asyncio.create_task(self._publish_stats(conn), name=f"stats-{self.broker_id}"))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if closed in done and not closed.cancelled():
                raise closed.result()  # how the connection ended says most
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
            raise LinkBroken("link task ended without an error", recoverable=True)
        finally:
            conn.close()

    def _keepalive_s(self, conn: Upstream) -> float:
        server = conn.connack.properties.get(wire.SERVER_KEEP_ALIVE) if conn.connack else None
        return float(server) if isinstance(server, int) and server > 0 else float(self.cloud.keepalive_s)

    async def _forward(self, conn: Upstream) -> None:
        """Drain the buffer into the connection: batches of PUBLISH, one write each."""
        loop = asyncio.get_running_loop()
        window = self._window
        limit = self.bridge.inflight
        receive_max = conn.connack.properties.get(wire.RECEIVE_MAXIMUM) if conn.connack else None
        if isinstance(receive_max, int) and 0 < receive_max < limit:
            limit = receive_max  # MQTT 5: the server allows at most this many unacknowledged
        window.limit = min(limit, 65_000)  # leave packet ids for control publishes
        conn.in_use = window.__contains__
        conn.on_puback = self._on_puback
        position = 0
        pending: list[Any] = []
        idx = 0
        rate = self.bridge.rate_limit
        next_slot = time.monotonic()
        try:
            while True:
                if idx >= len(pending):
                    pending, idx = await self.store.read(position, max(READ_BATCH, window.limit)), 0
                    if not pending:
                        await self.store.wait_for_data(position, 1.0)
                        continue
                    position = pending[-1].seq
                room = window.limit - len(window)
                if room <= 0:
                    self._room = loop.create_future()
                    await self._room
                    continue
                k = min(room, len(pending) - idx)
                if rate is not None:
                    # At most 10 ms worth of messages at once; never a burst after an idle spell.
                    now = time.monotonic()
                    if next_slot > now:
                        await asyncio.sleep(next_slot - now)
                        now = time.monotonic()
                    k = min(k, max(1, int(rate * 0.01)))
                    next_slot = max(next_slot, now) + k / rate
                self._send(conn, pending[idx : idx + k])
                idx += k
                await conn.drain()
        finally:
            window.clear()
            self._room = None

    def _send(self, conn: Upstream, records: list[Any]) -> None:
        """Encode ``records`` as PUBLISH packets, enter them in the window, write them at once."""
        now = time.monotonic()
        v5 = conn.version == wire.MQTT5
        items: list[tuple[str, bytes, int, bool, int, str | None]] = []
        done_qos0: list[int] = []
        window = self._window
        sent_high, resent = self._sent_high, self.resent
        for rec in records:
            seq = rec.seq
            remote, qos = self._route(rec.topic)
            if seq <= sent_high:
                resent += 1
            else:
                sent_high = seq
            pid = 0
            if qos:
                pid = conn.next_packet_id()
                window.sent(pid, seq, now)
            else:
                done_qos0.append(seq)
            items.append(
                (remote, rec.payload, qos, bool(rec.retain), pid, f"{self.site}/{self.broker_id}/{seq}" if v5 else None)
            )
        self._sent_high, self.resent = sent_high, resent
        conn.write(wire.encode_publishes(items, version=conn.version, id_key=ID_PROPERTY))
        for seq in done_qos0:  # QoS 0: written out, nothing to wait for
            self._on_acked(seq)
        note = getattr(self.store, "note_uplink", None)
        if note is not None:
            note(sent_high, resent)  # persisted with the next buffer transaction

    def _route(self, topic: str) -> tuple[str, int]:
        route = self._routes.get(topic)
        if route is None:
            rule = self.uplink_map.rule_for_local(topic)
            route = (self.uplink_map.to_remote(rule, topic), rule.qos) if rule else (topic, 1)
            if len(self._routes) >= 10_000:  # device topics are many but bounded; keep the cache so
                self._routes.clear()
            self._routes[topic] = route
        return route

    def _on_puback(self, packet_id: int, reason: int) -> None:
        seq = self._window.acked(packet_id)
        if seq is None:
            log.debug("uplink %s/%s: PUBACK for unknown packet id %d", self.site, self.broker_id, packet_id)
            return
        if reason >= 0x80:
            # MQTT 5: the cloud answered but refused the message (e.g. 0x87 not authorized).
            # Retrying would block the whole backlog behind it, so the row is released like
            # any acknowledged one, and the refusal is counted and logged: never silent.
            self.refused_upstream += 1
            self._ratelog.warning(
                "refused-upstream",
                "uplink %s/%s: the cloud refused %s: reason code %#04x",
                self.site,
                self.broker_id,
                self.message_id(seq),
                reason,
            )
        self._on_acked(seq)

    def _on_acked(self, seq: int) -> None:
        """A PUBACK for ``seq`` (on the loop): gather it, flush once per loop turn."""
        self._acked.append(seq)
        if not self._ack_flush_scheduled:
            self._ack_flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_flush_scheduled = False
        seqs, self._acked = self._acked, []
        if seqs:
            self.store.ack(seqs)  # rows are deleted only now, after their upstream PUBACK
            self.forwarded += len(seqs)
        room = self._room
        if room is not None and not room.done() and not self._window.full:
            room.set_result(None)

    def _load_counters(self) -> None:
        """Resume ``resent`` and the highest seq ever sent from the buffer (kill -9 re-sends count)."""
        counters = getattr(self.store, "uplink_counters", None)
        if counters is None or self._counters_loaded:
            return
        self._counters_loaded = True
        sent_high, resent = counters()
        self._sent_high = max(self._sent_high, sent_high)
        self.resent = max(self.resent, resent)

    async def _watchdog(self) -> None:
        """Break the link when the oldest publish has waited longer than ``puback_timeout_s``."""
        period = min(1.0, self.puback_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            if self._window.overdue(time.monotonic(), self.puback_timeout_s):
                raise LinkBroken(
                    f"no PUBACK for {self.puback_timeout_s:g} s ({len(self._window)} in flight)", recoverable=True
                )

    async def _downlink(self, conn: Upstream, queue: asyncio.Queue[wire.Publish]) -> None:
        while True:
            message = await queue.get()
            mapped = self.downlink_map.to_local(message.topic)
            if mapped is not None:
                _, local_topic = mapped
                await self.inject(local_topic, message.payload, min(message.qos, 1), message.retain)
                self.commands_down += 1
            if message.qos:
                conn.puback(message.packet_id)  # only now: a command is never acked before it is injected

    async def _publish_stats(self, conn: Upstream) -> None:
        assert self.stats is not None
        while True:
            payload = json.dumps(self.stats(), default=str)
            await conn.publish(stats_topic(self.site, self.broker_id), payload.encode(), qos=0, retain=True)
            await asyncio.sleep(self.stats_interval_s)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.debug("uplink %s/%s state %s -> %s", self.site, self.broker_id, self.state, state)
        self.state = state
        if self._state_changed is not None:
            self._state_changed(state)
