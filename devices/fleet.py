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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from broker.config import BrokerConfig, SiteConfig
from broker.ratelog import RateLimitedLog
from devices.failover import FailoverPolicy, FailoverSettings, State, backoff_delay
from devices.payload import Telemetry
from devices.placement import choose_broker, preference, site_from_ring_document

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
    "run_fleet",
    "status_topic",
    "telemetry_topic",
]

logger = logging.getLogger(__name__)
_mqtt_logger = logging.getLogger(f"{__name__}.mqtt")

# Longest single sleep, so stop and deadlines are noticed promptly even at low rates.
_TICK_S = 0.25


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


# --- pure helpers: naming, pacing, back-off ---------------------------------------------------


def device_ids(first: int, count: int) -> list[str]:
    """``dev-0001``, ``dev-0002``... (at least four digits)."""
    return [f"dev-{i:04d}" for i in range(first, first + count)]


def client_id(site: str, device: str) -> str:
    """The stable MQTT client id of a device."""
    return f"dev-{site}-{device}"


def telemetry_topic(site: str, device: str) -> str:
    """Where a device publishes its readings."""
    return f"telemetry/{site}/{device}/reading"


def status_topic(site: str, device: str) -> str:
    """The device's retained presence (its will says ``offline``)."""
    return f"status/{site}/{device}"


def command_filter(site: str, device: str) -> str:
    """What a device subscribes to for its commands."""
    return f"commands/{site}/{device}/#"


def next_due(due: float, period: float, now: float) -> float:
    """The next send time after ``due``; never in the past, so a stalled device does not burst."""
    return max(due + period, now)


def _connect_packet(
    client_id: str, keepalive_s: int, username: str | None = None, password: str | None = None
) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session (a probe leaves nothing behind)."""

    def utf8(value: str) -> bytes:
        raw = value.encode()
        return len(raw).to_bytes(2, "big") + raw

    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if username is not None and password else 0)
    payload = utf8(client_id) + (utf8(username) if username is not None else b"")
    if username is not None and password:
        payload += utf8(password)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive_s.to_bytes(2, "big") + payload
    length, size = b"", len(body)
    while True:  # the remaining length is a varint (a password can take a CONNECT past 127 bytes)
        byte, size = size % 128, size // 128
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return b"\x10" + length + body


async def probe_broker(
    host: str,
    port: int,
    client_id: str,
    timeout: float,
    *,
    username: str | None = None,
    password: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bool:
    """True if the broker at host:port answers a CONNECT with CONNACK 0 within ``timeout`` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context)
            writer.write(_connect_packet(client_id, 10, username, password))
            await writer.drain()
            data = await reader.readexactly(4)
            writer.write(b"\xe0\x00")  # DISCONNECT
            await writer.drain()
            return data[0] == 0x20 and data[3] == 0
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await writer.wait_closed()


# --- the shell ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Counters:
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


@dataclass(slots=True)
class _Device:
    id: str
    client_id: str
    rng: random.Random
    backoff_rng: random.Random
    due: float
    base_temp: float
    base_humidity: float
    policy: FailoverPolicy
    ring: tuple[tuple[str, str, int, float], ...] = ()
    prober: asyncio.Task[None] | None = None
    broker: str = ""
    attempts: int = 0
    moving: bool = False
    history: list[Move] = field(default_factory=list)
    next_seq: int = 1
    pending: tuple[int, bytes] | None = None
    session_up: bool = False
    published: int = 0
    acked: int = 0
    commands: int = 0
    errors: int = 0
    reconnects: int = 0
    first_attempt: asyncio.Event = field(default_factory=asyncio.Event)

    def readings(self) -> dict[str, float]:
        return {
            "temp": round(self.base_temp + self.rng.gauss(0.0, 0.3), 2),
            "humidity": round(self.base_humidity + self.rng.gauss(0.0, 1.0), 1),
        }


class _Runner:
    def __init__(
        self,
        config: FleetConfig,
        stop: asyncio.Event,
        on_ack: Callable[[Ack], None] | None,
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
        self.brokers = {b.id: b for b in config.site.brokers}
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
        self._ring_docs: dict[bytes, SiteConfig | None] = {}  # parsed ring documents by payload
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time()
        self.deadline = None if config.duration_s is None else self.started_at + config.duration_s
        self.period = 1.0 / config.rate
        self.counters = _Counters()
        self.connect_slots = asyncio.Semaphore(config.connect_batch)
        self.warnings = RateLimitedLog(logger, interval_s=10.0, clock=self.loop.time)
        choose_broker(config.site, "dev-0000")  # a site no device can use fails here, not per device
        self.devices = [self._make_device(d) for d in device_ids(config.first_device, config.devices)]

    def _make_device(self, device: str) -> _Device:
        rng = random.Random(f"{self.cfg.seed}:{self.site}:{device}")
        backoff_rng = random.Random(f"{self.cfg.seed}:{self.site}:{device}:backoff")
        walk = [b.id for b in preference(self.cfg.site, device, self.cfg.preference_n)]
        return _Device(
            id=device,
            client_id=client_id(self.site, device),
            rng=rng,
            backoff_rng=backoff_rng,
            due=0.0,
            base_temp=rng.uniform(15.0, 30.0),
            base_humidity=rng.uniform(30.0, 60.0),
            policy=FailoverPolicy(walk, self.failover, backoff_rng, self.loop.time()),
            ring=_ring_key(self.cfg.site),
        )

    def stats(self) -> FleetStats:
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

    def over(self) -> bool:
        return self.stop.is_set() or (self.deadline is not None and self.loop.time() >= self.deadline)

    def _done(self, dev: _Device) -> bool:
        return self.over() or (self.cfg.messages is not None and dev.acked >= self.cfg.messages)

    async def _sleep_until(self, when: float, dev: _Device | None = None) -> bool:
        """Sleep until ``when`` in short ticks; False if the fleet is over (or ``dev`` is moving) first."""
        while (left := when - self.loop.time()) > 0:
            if self.over() or (dev is not None and dev.moving):
                return False
            await asyncio.sleep(min(left, _TICK_S))
        return not self.over() and not (dev is not None and dev.moving)

    def _record(self, dev: _Device, broker: str | None, state: str, reason: str) -> None:
        move = Move(device=dev.id, at=self.loop.time(), broker=broker, state=state, reason=reason)
        dev.history.append(move)
        if self.on_move is not None:
            self.on_move(move)

    def _endpoint(self, broker: BrokerConfig) -> tuple[str, int]:
        return broker.host, broker.tls_port if self.ssl_context is not None and broker.tls_port else broker.port

    def _login(self, dev: _Device) -> tuple[str | None, str | None]:
        secret = self.cfg.passwords.get(dev.id)
        return (dev.id, secret.get_secret_value()) if secret is not None else (None, None)

    def _client(self, dev: _Device, broker: BrokerConfig) -> aiomqtt.Client:
        host, port = self._endpoint(broker)
        username, password = self._login(dev)
        return aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            tls_context=self.ssl_context,
            identifier=dev.client_id,
            clean_session=False,
            keepalive=self.cfg.keepalive_s,
            timeout=self.cfg.connect_timeout_s,
            will=aiomqtt.Will(status_topic(self.site, dev.id), b"offline", qos=1, retain=True),
            logger=_mqtt_logger,
        )

    async def run_device(self, dev: _Device) -> None:
        self.counters.started += 1
        dev.due = self.loop.time() + dev.rng.uniform(0.0, self.period)
        try:
            while not self._done(dev):
                # The one decision point: the failover policy says where, and not before when.
                attempt = dev.policy.next_attempt(self.loop.time())
                if not await self._sleep_until(attempt.at):
                    break
                if dev.attempts:
                    dev.reconnects += 1
                    self.counters.reconnects += 1
                dev.attempts += 1
                broker = self.brokers[attempt.broker]
                dev.broker = broker.id
                dev.session_up = False
                dev.moving = False
                try:
                    await self._connection(dev, broker)
                except (aiomqtt.MqttError, OSError) as exc:
                    self._failed(dev, broker, exc)
                    if dev.session_up:
                        dev.policy.lost(broker.id, self.loop.time())
                        self._record(dev, None, dev.policy.status.state, dev.policy.status.reason)
                    else:
                        dev.policy.connect_failed(broker.id, self.loop.time())
                finally:
                    dev.first_attempt.set()
                if dev.moving:
                    self._record(dev, None, dev.policy.status.state, dev.policy.status.reason)
        finally:
            dev.first_attempt.set()
            self.counters.finished += 1

    def _failed(self, dev: _Device, broker: BrokerConfig, exc: BaseException) -> None:
        dev.errors += 1
        self.counters.errors += 1
        logger.debug("%s: connection to %s failed: %s", dev.id, broker.id, exc)
        self.warnings.warning(
            f"{broker.id}:{type(exc).__name__}",
            "devices on %s/%s (%s:%d) lost or could not open their connection: %s; retrying with back-off",
            self.site,
            broker.id,
            broker.host,
            broker.port,
            exc,
        )

    async def _connection(self, dev: _Device, broker: BrokerConfig) -> None:
        """One connection's life; returns when the device is done, raises MqttError when it breaks."""
        async with contextlib.AsyncExitStack() as stack:
            async with self.connect_slots:
                if self._done(dev):
                    return
                client = await stack.enter_async_context(self._client(dev, broker))
            dev.session_up = True
            placed = dev.policy.connected(broker.id, self.loop.time())
            self._record(dev, broker.id, placed.state, placed.reason)
            if placed.state is State.FAILOVER:
                self.warnings.log(
                    logging.INFO,
                    f"{dev.policy.owner}>{broker.id}:failover",
                    "devices of %s/%s failed over to %s (%s)",
                    self.site,
                    dev.policy.owner,
                    broker.id,
                    placed.reason,
                )
            elif dev.reconnects:
                self.warnings.log(
                    logging.INFO,
                    f"{broker.id}:up",
                    "devices reconnected to %s/%s (%s:%d)",
                    self.site,
                    broker.id,
                    broker.host,
                    broker.port,
                )
            self.counters.connected += 1
            self.counters.connected_peak = max(self.counters.connected_peak, self.counters.connected)
            self.counters.per_broker[broker.id] = self.counters.per_broker.get(broker.id, 0) + 1
            stack.callback(self._disconnected, broker.id)
            logger.debug("%s: connected to %s (%s:%d)", dev.id, broker.id, broker.host, broker.port)
            dev.first_attempt.set()
            timeout = self.cfg.publish_timeout_s
            status = status_topic(self.site, dev.id)
            # Subscribe first: once 'online' is visible, a command sent to the device reaches it.
            # The ring document comes with it (retained); a broker that refuses it (ACL) answers 0x80.
            filters = [(command_filter(self.site, dev.id), 1)]
            if self.cfg.follow_ring:
                filters.append((self.ring_topic, 1))
            await client.subscribe(filters, timeout=timeout)
            await client.publish(status, b"online", qos=1, retain=True, timeout=timeout)
            await self._session(client, dev, broker)
            if dev.moving:
                # Going home: a clean DISCONNECT (no will); the owner announces 'online' next.
                logger.debug("%s: leaving %s for its owner %s", dev.id, broker.id, dev.policy.owner)
                return
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(status, b"offline", qos=1, retain=True, timeout=timeout)

    def _disconnected(self, broker: str) -> None:
        self.counters.connected -= 1
        self.counters.per_broker[broker] -= 1

    async def _session(self, client: aiomqtt.Client, dev: _Device, broker: BrokerConfig) -> None:
        """Publish and take commands until done; raises MqttError if the connection breaks."""
        reader = asyncio.create_task(self._read_commands(client, dev), name=f"commands-{dev.id}")
        publisher = asyncio.create_task(self._publish(client, dev, broker), name=f"publish-{dev.id}")
        tasks = [reader, publisher]
        self._start_prober(dev)
        try:
            # The prober only sets dev.moving; the publisher then ends the session between messages.
            await asyncio.wait((reader, publisher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if dev.prober is not None:
                tasks.append(dev.prober)
                dev.prober = None
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for res in results:
            if isinstance(res, aiomqtt.MqttError | OSError):
                raise res
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                raise res

    def _start_prober(self, dev: _Device) -> None:
        """Run the probe loop while the policy wants probes and none runs (at connect, or after a ring change)."""
        if dev.policy.next_probe_at is not None and (dev.prober is None or dev.prober.done()):
            dev.prober = asyncio.create_task(self._probe_home(dev), name=f"probe-{dev.id}")

    async def _probe_home(self, dev: _Device) -> None:
        """While away, probe the owner when the policy says; mark the device moving when it says go home."""
        while (at := dev.policy.next_probe_at) is not None:
            if not await self._sleep_until(at):
                return
            if at != dev.policy.next_probe_at:
                continue  # the ring changed while we slept: new owner, new schedule
            owner = self.brokers[dev.policy.owner]
            host, port = self._endpoint(owner)
            username, password = self._login(dev)
            ok = await probe_broker(host, port, f"probe-{dev.client_id}", self.cfg.probe_timeout_s,
                                    username=username, password=password, ssl_context=self.ssl_context)
            logger.debug("%s: probe of owner %s: %s", dev.id, owner.id, "ok" if ok else "no answer")
            if dev.policy.probe_result(ok, self.loop.time()):
                dev.moving = True
                return

    async def _read_commands(self, client: aiomqtt.Client, dev: _Device) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if message.topic.value == self.ring_topic:
                self._ring_document(dev, payload)
                continue
            dev.commands += 1
            self.counters.commands += 1
            logger.info(
                "%s: command %s received (%d bytes): %s",
                dev.id,
                message.topic.value,
                len(payload),
                payload[:80].decode("utf-8", errors="replace"),
            )

    async def _publish(self, client: aiomqtt.Client, dev: _Device, broker: BrokerConfig) -> None:
        topic = telemetry_topic(self.site, dev.id)
        while True:
            if dev.pending is None:
                if self._done(dev) or not await self._sleep_until(dev.due, dev):
                    return
                body = Telemetry(
                    device=dev.id, site=self.site, seq=dev.next_seq, ts=time.time(), readings=dev.readings()
                )
                dev.pending = (dev.next_seq, body.encode())
                dev.next_seq += 1
                dev.due = next_due(dev.due, self.period, self.loop.time())
            seq, payload = dev.pending
            dev.published += 1
            self.counters.published += 1
            await client.publish(topic, payload, qos=1, timeout=self.cfg.publish_timeout_s)
            dev.pending = None
            dev.acked += 1
            self.counters.acked += 1
            if self.on_ack is not None:
                self.on_ack(Ack(device=dev.id, seq=seq, broker=broker.id, topic=topic, payload=payload))

    def _ring_document(self, dev: _Device, payload: bytes) -> None:
        """The broker's ring document: if it is another ring than the device's, follow it."""
        if payload not in self._ring_docs:
            if len(self._ring_docs) > 16:
                self._ring_docs.clear()
            self._ring_docs[payload] = site_from_ring_document(self.cfg.site, payload)
        site = self._ring_docs[payload]
        if site is None:
            self.warnings.warning("ring", "ignoring a malformed ring document on %s", self.ring_topic)
            return
        key = _ring_key(site)
        if key == dev.ring:
            return
        dev.ring = key
        for b in site.brokers:
            self.brokers[b.id] = b
        old = dev.policy.owner
        walk = [b.id for b in preference(site, dev.id, self.cfg.preference_n)]
        if dev.policy.set_preference(walk, self.loop.time()):
            logger.debug("%s: ring changed, owner %s -> %s: %s", dev.id, old, dev.policy.owner,
                         dev.policy.status.reason)
            self.warnings.log(logging.INFO, f"ring>{dev.policy.owner}",
                              "ring of %s changed: devices of %s now belong to %s and move there within %.0fs "
                              "plus the hold-down", self.site, old, dev.policy.owner, self.cfg.move_window_s)
            self._start_prober(dev)

    def reports(self) -> tuple[DeviceReport, ...]:
        return tuple(
            DeviceReport(
                device=d.id,
                client_id=d.client_id,
                broker=d.broker,
                published=d.published,
                acked=d.acked,
                commands=d.commands,
                errors=d.errors,
                reconnects=d.reconnects,
                owner=d.policy.owner,
                history=tuple(d.history),
            )
            for d in self.devices
        )


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
    runner = _Runner(config, stop, on_ack, on_move)
    progress = on_progress if on_progress is not None else (lambda _s: None)
    tasks: list[asyncio.Task[None]] = []
    ticker = asyncio.create_task(_tick(runner, progress), name="fleet-progress")
    batch = config.connect_batch
    logger.info(
        "starting %d devices on site %s (%d brokers) in batches of %d",
        config.devices,
        runner.site,
        len(config.site.brokers),
        batch,
    )
    try:
        for i in range(0, len(runner.devices), batch):
            group = runner.devices[i : i + batch]
            if runner.over():
                break
            tasks += [asyncio.create_task(runner.run_device(d), name=f"device-{d.id}") for d in group]
            waits = [asyncio.create_task(d.first_attempt.wait()) for d in group]
            _, pending = await asyncio.wait(waits, timeout=config.connect_timeout_s + 1.0)
            for w in pending:
                w.cancel()
            progress(runner.stats())
        s = runner.stats()
        logger.info("fleet started: %d/%d connected after %.1fs", s.connected, s.devices, s.elapsed_s)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    final = runner.stats()
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
    return FleetResult(stats=final, devices=runner.reports(), stopped=stop.is_set())


def _ring_key(site: SiteConfig) -> tuple[tuple[str, str, int, float], ...]:
    """What identifies a ring for a device: its brokers' ids, addresses and weights."""
    return tuple(sorted((b.id, b.host, b.port, b.weight) for b in site.brokers))


async def _tick(runner: _Runner, progress: Callable[[FleetStats], None]) -> None:
    while True:
        await asyncio.sleep(runner.cfg.progress_interval_s)
        progress(runner.stats())
