"""One simulated device: its state and its connection's life (the shell around ``devices.failover``).

A device connects where its failover policy says, subscribes to its commands
(and the site's ring document), announces ``online``, then publishes telemetry
with at most one message in flight until the fleet is over; a broken
connection is retried and the unacknowledged message re-sent first. While away
from its owner it probes the owner and goes home when the policy says so; a
ring document that moves its owner makes it probe and move the same way
(``devices.fleet.ring_follow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

import aiomqtt

from broker.config import BrokerConfig
from devices.failover import FailoverPolicy, State
from devices.fleet.context import FleetContext
from devices.fleet.mqtt import DeviceClient
from devices.fleet.naming import client_id, command_filter, status_topic, telemetry_topic
from devices.fleet.probe import probe_broker
from devices.fleet.reports import Ack, DeviceReport, Move
from devices.fleet.ring_follow import RingDocuments, RingKey, ring_key
from devices.payload import Telemetry
from devices.placement import preference

__all__ = ["Device", "next_due"]

logger = logging.getLogger(__name__)
# paho's own log lines; the simulations quieten this name.
_mqtt_logger = logging.getLogger("devices.fleet.mqtt")


def next_due(due: float, period: float, now: float) -> float:
    """The next send time after ``due``; never in the past, so a stalled device does not burst."""
    return max(due + period, now)


@dataclass(slots=True)
class _State:
    """What a device remembers across connections."""

    rng: random.Random
    policy: FailoverPolicy
    ring: RingKey
    due: float = 0.0
    base_temp: float = 0.0
    base_humidity: float = 0.0
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


class Device:
    """One device of a fleet: ``run()`` until the fleet is over or its messages are acknowledged."""

    def __init__(self, fleet: FleetContext, device: str, ring_docs: RingDocuments) -> None:
        self.fleet = fleet
        self.id = device
        self.client_id = client_id(fleet.site, device)
        self.ring_docs = ring_docs
        cfg = fleet.cfg
        rng = random.Random(f"{cfg.seed}:{fleet.site}:{device}")
        backoff_rng = random.Random(f"{cfg.seed}:{fleet.site}:{device}:backoff")
        walk = [b.id for b in preference(cfg.site, device, cfg.preference_n)]
        self.s = _State(
            rng=rng,
            policy=FailoverPolicy(walk, fleet.failover, backoff_rng, fleet.now()),
            ring=ring_key(cfg.site),
            base_temp=rng.uniform(15.0, 30.0),
            base_humidity=rng.uniform(30.0, 60.0),
        )
        # Set after the first connection attempt: the runner paces start-up batches on it.
        self.first_attempt = asyncio.Event()

    def report(self) -> DeviceReport:
        """The device as it is now."""
        s = self.s
        return DeviceReport(
            device=self.id,
            client_id=self.client_id,
            broker=s.broker,
            published=s.published,
            acked=s.acked,
            commands=s.commands,
            errors=s.errors,
            reconnects=s.reconnects,
            owner=s.policy.owner,
            history=tuple(s.history),
        )

    def _done(self) -> bool:
        messages = self.fleet.cfg.messages
        return self.fleet.over() or (messages is not None and self.s.acked >= messages)

    def _moving(self) -> bool:
        return self.s.moving

    def _readings(self) -> dict[str, float]:
        rng = self.s.rng
        return {
            "temp": round(self.s.base_temp + rng.gauss(0.0, 0.3), 2),
            "humidity": round(self.s.base_humidity + rng.gauss(0.0, 1.0), 1),
        }

    def _record(self, broker: str | None, state: str, reason: str) -> None:
        move = Move(device=self.id, at=self.fleet.now(), broker=broker, state=state, reason=reason)
        self.s.history.append(move)
        if self.fleet.on_move is not None:
            self.fleet.on_move(move)

    def _client(self, broker: BrokerConfig) -> DeviceClient:
        host, port = self.fleet.endpoint(broker)
        username, password = self.fleet.login(self.id)
        cfg = self.fleet.cfg
        return DeviceClient(
            host,
            port,
            username=username,
            password=password,
            tls_context=self.fleet.ssl_context,
            identifier=self.client_id,
            clean_session=False,
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            will=aiomqtt.Will(status_topic(self.fleet.site, self.id), b"offline", qos=1, retain=True),
            logger=_mqtt_logger,
        )

    async def run(self) -> None:
        """Connect, publish, fail over and come home until done; connection problems are retried, not raised."""
        fleet, s = self.fleet, self.s
        fleet.counters.started += 1
        s.due = fleet.now() + s.rng.uniform(0.0, fleet.period)
        try:
            while not self._done():
                # The one decision point: the failover policy says where, and not before when.
                attempt = s.policy.next_attempt(fleet.now())
                if not await fleet.sleep_until(attempt.at):
                    break
                if s.attempts:
                    s.reconnects += 1
                    fleet.counters.reconnects += 1
                s.attempts += 1
                broker = fleet.brokers[attempt.broker]
                s.broker = broker.id
                s.session_up = False
                s.moving = False
                try:
                    await self._connection(broker)
                except (aiomqtt.MqttError, OSError) as exc:
                    self._failed(broker, exc)
                    if s.session_up:
                        s.policy.lost(broker.id, fleet.now())
                        self._record(None, s.policy.status.state, s.policy.status.reason)
                    else:
                        s.policy.connect_failed(broker.id, fleet.now())
                finally:
                    self.first_attempt.set()
                if s.moving:
                    self._record(None, s.policy.status.state, s.policy.status.reason)
        finally:
            self.first_attempt.set()
            fleet.counters.finished += 1

    def _failed(self, broker: BrokerConfig, exc: BaseException) -> None:
        self.s.errors += 1
        self.fleet.counters.errors += 1
        logger.debug("%s: connection to %s failed: %s", self.id, broker.id, exc)
        self.fleet.warnings.warning(
            f"{broker.id}:{type(exc).__name__}",
            "devices on %s/%s (%s:%d) lost or could not open their connection: %s; retrying with back-off",
            self.fleet.site,
            broker.id,
            broker.host,
            broker.port,
            exc,
        )

    async def _connection(self, broker: BrokerConfig) -> None:
        """One connection's life; returns when the device is done, raises MqttError when it breaks."""
        fleet, s = self.fleet, self.s
        async with contextlib.AsyncExitStack() as stack:
            async with fleet.connect_slots:
                if self._done():
                    return
                client = await stack.enter_async_context(self._client(broker))
            s.session_up = True
            placed = s.policy.connected(broker.id, fleet.now())
            self._record(broker.id, placed.state, placed.reason)
            if placed.state is State.FAILOVER:
                fleet.warnings.log(
                    logging.INFO,
                    f"{s.policy.owner}>{broker.id}:failover",
                    "devices of %s/%s failed over to %s (%s)",
                    fleet.site,
                    s.policy.owner,
                    broker.id,
                    placed.reason,
                )
            elif s.reconnects:
                fleet.warnings.log(
                    logging.INFO,
                    f"{broker.id}:up",
                    "devices reconnected to %s/%s (%s:%d)",
                    fleet.site,
                    broker.id,
                    broker.host,
                    broker.port,
                )
            fleet.counters.connect(broker.id)
            stack.callback(fleet.counters.disconnect, broker.id)
            logger.debug("%s: connected to %s (%s:%d)", self.id, broker.id, broker.host, broker.port)
            self.first_attempt.set()
            timeout = fleet.cfg.publish_timeout_s
            status = status_topic(fleet.site, self.id)
            # Subscribe first: once 'online' is visible, a command sent to the device reaches it.
            # The ring document comes with it (retained); a broker that refuses it (ACL) answers 0x80.
            filters = [(command_filter(fleet.site, self.id), 1)]
            if fleet.cfg.follow_ring:
                filters.append((fleet.ring_topic, 1))
            await client.subscribe(filters, timeout=timeout)
            await client.publish(status, b"online", qos=1, retain=True, timeout=timeout)
            await self._session(client, broker)
            if s.moving:
                # Going home: a clean DISCONNECT (no will); the owner announces 'online' next.
                logger.debug("%s: leaving %s for its owner %s", self.id, broker.id, s.policy.owner)
                return
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(status, b"offline", qos=1, retain=True, timeout=timeout)

    async def _session(self, client: aiomqtt.Client, broker: BrokerConfig) -> None:
        """Publish and take commands until done; raises MqttError if the connection breaks."""
        s = self.s
        reader = asyncio.create_task(self._read_commands(client), name=f"commands-{self.id}")
        publisher = asyncio.create_task(self._publish(client, broker), name=f"publish-{self.id}")
        tasks = [reader, publisher]
        self._start_prober()
        try:
            # The prober only sets moving; the publisher then ends the session between messages.
            await asyncio.wait((reader, publisher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if s.prober is not None:
                tasks.append(s.prober)
                s.prober = None
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for res in results:
            if isinstance(res, aiomqtt.MqttError | OSError):
                raise res
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                raise res

    def _start_prober(self) -> None:
        """Run the probe loop while the policy wants probes and none runs (at connect, or after a ring change)."""
        s = self.s
        if s.policy.next_probe_at is not None and (s.prober is None or s.prober.done()):
            s.prober = asyncio.create_task(self._probe_home(), name=f"probe-{self.id}")

    async def _probe_home(self) -> None:
        """While away, probe the owner when the policy says; mark the device moving when it says go home."""
        fleet, s = self.fleet, self.s
        while (at := s.policy.next_probe_at) is not None:
            if not await fleet.sleep_until(at):
                return
            if at != s.policy.next_probe_at:
                continue  # the ring changed while we slept: new owner, new schedule
            owner = fleet.brokers[s.policy.owner]
            host, port = fleet.endpoint(owner)
            username, password = fleet.login(self.id)
            ok = await probe_broker(
                host,
                port,
                f"probe-{self.client_id}",
                fleet.cfg.probe_timeout_s,
                username=username,
                password=password,
                ssl_context=fleet.ssl_context,
            )
            logger.debug("%s: probe of owner %s: %s", self.id, owner.id, "ok" if ok else "no answer")
            if s.policy.probe_result(ok, fleet.now()):
                s.moving = True
                return

    async def _read_commands(self, client: aiomqtt.Client) -> None:
        fleet = self.fleet
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if message.topic.value == fleet.ring_topic:
                self._ring_document(payload)
                continue
            self.s.commands += 1
            fleet.counters.commands += 1
            logger.info(
                "%s: command %s received (%d bytes): %s",
                self.id,
                message.topic.value,
                len(payload),
                payload[:80].decode("utf-8", errors="replace"),
            )

    async def _publish(self, client: aiomqtt.Client, broker: BrokerConfig) -> None:
        fleet, s = self.fleet, self.s
        topic = telemetry_topic(fleet.site, self.id)
        while True:
            if s.pending is None:
                if self._done() or not await fleet.sleep_until(s.due, self._moving):
                    return
                body = Telemetry(
                    device=self.id, site=fleet.site, seq=s.next_seq, ts=time.time(), readings=self._readings()
                )
                s.pending = (s.next_seq, body.encode())
                s.next_seq += 1
                s.due = next_due(s.due, fleet.period, fleet.now())
            seq, payload = s.pending
            s.published += 1
            fleet.counters.published += 1
            await client.publish(topic, payload, qos=1, timeout=fleet.cfg.publish_timeout_s)
            s.pending = None
            s.acked += 1
            fleet.counters.acked += 1
            if fleet.on_ack is not None:
                fleet.on_ack(Ack(device=self.id, seq=seq, broker=broker.id, topic=topic, payload=payload))

    def _ring_document(self, payload: bytes) -> None:
        """The broker's ring document: if it is another ring than the device's, follow it."""
        fleet, s = self.fleet, self.s
        site = self.ring_docs.parse(payload)
        if site is None:
            fleet.warnings.warning("ring", "ignoring a malformed ring document on %s", fleet.ring_topic)
            return
        key = ring_key(site)
        if key == s.ring:
            return
        s.ring = key
        for b in site.brokers:
            fleet.brokers[b.id] = b
        old = s.policy.owner
        walk = [b.id for b in preference(site, self.id, fleet.cfg.preference_n)]
        if s.policy.set_preference(walk, fleet.now()):
            logger.debug("%s: ring changed, owner %s -> %s: %s", self.id, old, s.policy.owner, s.policy.status.reason)
            fleet.warnings.log(
                logging.INFO,
                f"ring>{s.policy.owner}",
                "ring of %s changed: devices of %s now belong to %s and move there within %.0fs plus the hold-down",
                fleet.site,
                old,
                s.policy.owner,
                fleet.cfg.move_window_s,
            )
            self._start_prober()
