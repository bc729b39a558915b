"""The bridge's MQTT link to the cloud: uplink drain from the buffer, downlink commands.

One MQTT connection per edge broker (client id ``edgemq-bridge-{site}-{broker}``,
persistent session) carries both directions, as Mosquitto's bridge does.

Uplink, top-down (Litestream style): progress is a *position* — the last buffer
seq handed to the connection. The forwarder reads the buffer after that
position in seq order, publishes with at most ``inflight`` messages unacknowledged,
and acknowledges a row to the buffer (which deletes it) only after the upstream
PUBACK. When the connection breaks, in-flight publishes are abandoned and the
position restarts at 0: everything not yet acknowledged is re-sent from the
oldest, in order (at-least-once; duplicates carry the same stable id). It wakes
when the buffer commits something new, or on a ticker.

Hot path: records are published through the paho client inside aiomqtt
(``client._client``) with no task, future or timeout per message. One
``on_publish`` dispatcher maps each PUBACK's packet id to its seq through the
:class:`~bridge.inflight.InflightWindow` (other packet ids go on to aiomqtt);
the seqs acknowledged during one event-loop turn go to ``store.ack`` together.
One watchdog task breaks the link when the oldest unacknowledged publish has
waited ``puback_timeout_s`` (30 s).

Downlink: messages arriving on the downlink filters are injected into the local
broker (``inject``), which never feeds them back to the uplink.

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

import aiomqtt
from paho.mqtt.client import error_string as paho_error
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.backoff import Backoff
from bridge.inflight import InflightWindow
from broker.config import BridgeConfig, CloudConfig
from broker.errors import LinkBroken
from broker.ratelog import RateLimitedLog
from broker.topics import TopicMap

__all__ = ["LinkStats", "StoreLike", "StoredLike", "Uplink", "state_topic"]

log = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 30.0
HEALTHY_AFTER_S = 10.0


class StoredLike(Protocol):
    """A buffered message as the link needs it."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class StoreLike(Protocol):
    """The parts of the buffer's async store the link uses."""

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


@dataclass(frozen=True)
class LinkStats:
    """Snapshot of the link."""

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
        while True:
            self._set_state("connecting")
            started = time.monotonic()
            try:
                await self._serve_once()
            except asyncio.CancelledError:
                self._set_state("closed")
                raise
            except (aiomqtt.MqttError, OSError, LinkBroken, ssl.SSLError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._ratelog.warning(
                    "link-down", "uplink %s/%s to %s:%s down: %s",
                    self.site, self.broker_id, self.cloud.host, self.cloud.port, self.last_error,
                )
            if self.state == "connected":
                self.disconnects += 1
            if time.monotonic() - started > HEALTHY_AFTER_S:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self._set_state("backoff")
            await asyncio.sleep(delay)

    # ---- one connection -------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        v5 = self.cloud.protocol == "5"
        password = os.environ.get(self.cloud.password_env) if self.cloud.password_env else None
        tls_params = None
        tls_insecure = None
        if self.cloud.tls is not None:
            t = self.cloud.tls
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(t.ca_file) if t.ca_file else None,
                certfile=str(t.cert_file) if t.cert_file else None,
                keyfile=str(t.key_file) if t.key_file else None,
            )
            tls_insecure = t.insecure
        offline = json.dumps({"site": self.site, "broker": self.broker_id, "state": "offline"})
        connect_props = None
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped
            connect_props.SessionExpiryInterval = 0xFFFFFFFF
        client = aiomqtt.Client(
            self.cloud.host,
            self.cloud.port,
            identifier=f"edgemq-bridge-{self.site}-{self.broker_id}",
            username=self.cloud.username,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            clean_start=False if v5 else 3,  # 3 == paho's MQTT_CLEAN_START_FIRST_ONLY (ignored for 3.1.1)
            properties=connect_props,
            will=aiomqtt.Will(state_topic(self.site, self.broker_id), offline, qos=1, retain=True),
            keepalive=self.cloud.keepalive_s,
            tls_params=tls_params,
            tls_insecure=tls_insecure,
            timeout=10,
            max_inflight_messages=self.bridge.inflight + 2,
            logger=logging.getLogger("bridge.paho"),
        )
        # aiomqtt warns above 10 pending publishes; our window is the bound that matters.
        client.pending_calls_threshold = self.bridge.inflight + 10
        return client

    async def _serve_once(self) -> None:
        async with self._client() as client:
            self.connects += 1
            self._set_state("connected")
            log.info("uplink %s/%s connected to %s:%s", self.site, self.broker_id, self.cloud.host, self.cloud.port)
            online = json.dumps(
                {"site": self.site, "broker": self.broker_id, "state": "online", "since": time.time()}
            )
            await client.publish(state_topic(self.site, self.broker_id), online, qos=1, retain=True)
            for topic_filter, qos in self.downlink_map.remote_filters():
                await client.subscribe(topic_filter, qos)
            # Both directions share the connection: the first to fail ends it, and its own
            # exception (not an ExceptionGroup) goes to run()'s reconnect logic.
            tasks = [
                asyncio.create_task(self._forward(client), name=f"uplink-forward-{self.broker_id}"),
                asyncio.create_task(self._watchdog(), name=f"uplink-watchdog-{self.broker_id}"),
                asyncio.create_task(self._downlink(client), name=f"downlink-{self.broker_id}"),
            ]
            if self.stats is not None:
                tasks.append(asyncio.create_task(self._publish_stats(client), name=f"stats-{self.broker_id}"))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
            raise LinkBroken("link task ended without an error", recoverable=True)

    async def _forward(self, client: aiomqtt.Client) -> None:
        paho = client._client  # the hot path bypasses aiomqtt's per-call machinery (aiomqtt 2.x)
        aiomqtt_on_publish: Any = paho.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
            seq = self._window.acked(mid)
            if seq is None:  # one of aiomqtt's own publishes (state, stats)
                if aiomqtt_on_publish is not None:
                    aiomqtt_on_publish(c, userdata, mid, reason_code, properties)
            else:
                if getattr(reason_code, "is_failure", False):
                    # MQTT 5: the cloud answered but refused the message (e.g. 0x87 not
                    # authorized). Retrying would block the whole backlog behind it, so the
                    # row is released like any acknowledged one, and the refusal is counted
                    # and logged: never silent.
                    self.refused_upstream += 1
                    self._ratelog.warning(
                        "refused-upstream", "uplink %s/%s: the cloud refused %s: %s",
                        self.site, self.broker_id, self.message_id(seq), reason_code,
                    )
                self._on_acked(seq)

        paho.on_publish = on_publish
        loop = asyncio.get_running_loop()
        window = self._window
        position = 0
        rate = self.bridge.rate_limit
        next_slot = time.monotonic()
        try:
            while True:
                batch = await self.store.read(position, self.bridge.inflight)
                if not batch:
                    await self.store.wait_for_data(position, 1.0)
                    continue
                for rec in batch:
                    while window.full:
                        self._room = loop.create_future()
                        await self._room
                    if rate is not None:
                        now = time.monotonic()
                        if next_slot > now:
                            await asyncio.sleep(next_slot - now)
                        next_slot = max(next_slot, now) + 1.0 / rate
                    self._publish(paho, rec)
                    position = rec.seq
        finally:
            paho.on_publish = aiomqtt_on_publish
            window.clear()
            self._room = None

    def _publish(self, paho: Any, rec: Any) -> None:
        """Hand one record to the connection and enter it in the window."""
        route = self._routes.get(rec.topic)
        if route is None:
            rule = self.uplink_map.rule_for_local(rec.topic)
            route = (self.uplink_map.to_remote(rule, rec.topic), rule.qos) if rule else (rec.topic, 1)
            if len(self._routes) >= 10_000:  # device topics are many but bounded; keep the cache so
                self._routes.clear()
            self._routes[rec.topic] = route
        remote, qos = route
        props = None
        if self.cloud.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho is untyped
            props.UserProperty = ("edgemq-id", self.message_id(rec.seq))
        if rec.seq <= self._sent_high:
            self.resent += 1
        else:
            self._sent_high = rec.seq
        try:
            info = paho.publish(remote, rec.payload, qos, bool(rec.retain), props)
        except Exception as exc:  # paho raises ValueError & co. for what it cannot send
            raise LinkBroken(f"publish failed: {exc}", recoverable=True) from exc
        if info.rc != 0:
            raise LinkBroken(f"publish failed: {paho_error(info.rc)}", recoverable=True)
        if info.is_published():  # QoS 0 written out already: nothing to wait for
            self._on_acked(rec.seq)
        else:
            self._window.sent(info.mid, rec.seq, time.monotonic())

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

    async def _watchdog(self) -> None:
        """Break the link when the oldest publish has waited longer than ``puback_timeout_s``."""
        period = min(1.0, self.puback_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            if self._window.overdue(time.monotonic(), self.puback_timeout_s):
                raise LinkBroken(
                    f"no PUBACK for {self.puback_timeout_s:g} s ({len(self._window)} in flight)", recoverable=True
                )

    async def _downlink(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            mapped = self.downlink_map.to_local(str(message.topic))
            if mapped is None:
                continue
            _, local_topic = mapped
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            await self.inject(local_topic, payload, min(message.qos, 1), bool(message.retain))
            self.commands_down += 1

    async def _publish_stats(self, client: aiomqtt.Client) -> None:
        assert self.stats is not None
        while True:
            payload = json.dumps(self.stats(), default=str)
            await client.publish(stats_topic(self.site, self.broker_id), payload, qos=0, retain=True)
            await asyncio.sleep(self.stats_interval_s)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.debug("uplink %s/%s state %s -> %s", self.site, self.broker_id, self.state, state)
        self.state = state
        if self._state_changed is not None:
            self._state_changed(state)
