"""The standalone bridge's input: uplink messages taken from any local MQTT broker.

How it works
------------
One paho client (MQTT 5, its own network thread) keeps a persistent session at
the local broker (fixed client id ``edgemq-bridge-local-{site}-{broker}``,
``clean_start`` false, session kept for ever) and subscribes at QoS 1 to the
uplink patterns with *no local*, so what the bridge itself publishes downlink is
never fed back up. Acknowledgements are manual: each message is appended to the
buffer and the local broker gets its PUBACK only after the group commit holding it
(in arrival order). A message the buffer refuses (``reject_new``, disk full) is not
acknowledged; the source then drops its connection and reconnects, and the local
broker redelivers everything unacknowledged from the persistent session (the same
back-pressure the embedded broker applies to devices).

Weaker than the embedded broker, by construction: the local broker acknowledged
the device before the bridge saw the message; what the local broker loses (its
queue limits, a restart without persistence) edgemq never sees (docs/guarantees.md).

What it does not do
-------------------
No forwarding (``bridge.link.Uplink`` drains the same store), no buffering of its
own, no retries beyond the local broker's redelivery. paho's exceptions stay here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.buffer import Record
from bridge.store import Store
from broker.errors import LinkBroken, StoreError
from broker.ratelog import RateLimitedLog
from broker.topics import TopicMap, device_key

__all__ = ["LocalSource"]

log = logging.getLogger(__name__)

RECONNECT_AFTER_REFUSAL_S = 1.0


class LocalSource:
    """Feeds the store from a local broker; use ``async with`` and ``inject`` for the downlink."""

    def __init__(self, *, host: str, port: int, site: str, broker_id: str, uplink_map: TopicMap, store: Store) -> None:
        self.host = host
        self.port = port
        self.site = site
        self.broker_id = broker_id
        self.uplink_map = uplink_map
        self.store = store
        self.received = 0
        self.committed = 0
        self.refused = 0
        self.injected = 0
        self.connects = 0
        self.connected = False
        self._ratelog = RateLimitedLog(log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acks: asyncio.Queue[tuple[int, int, asyncio.Task[int]] | None] = asyncio.Queue()
        self._acker: asyncio.Task[None] | None = None
        self._reconnecting = False
        self._bounce: asyncio.Future[None] | None = None
        self._up = asyncio.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgemq-bridge-local-{site}-{broker_id}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.reconnect_delay_set(1, 5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # ---- lifecycle --------------------------------------------------------------------
    async def __aenter__(self) -> LocalSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self, timeout: float = 30.0) -> None:
        """Connect (retrying in paho's thread) and wait for the first session; LinkBroken on timeout."""
        self._loop = asyncio.get_running_loop()
        self._acker = asyncio.create_task(self._ack_in_order(), name=f"local-acks-{self.broker_id}")
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped
        props.SessionExpiryInterval = 0xFFFFFFFF
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            await self.aclose()
            raise LinkBroken(
                f"local broker {self.host}:{self.port} did not answer in {timeout:.0f}s",
                hint="start the local broker or fix --local-host/--local-port",
                site=self.site,
                broker=self.broker_id,
            ) from None
        log.info("local source %s/%s subscribed at %s:%s", self.site, self.broker_id, self.host, self.port)

    async def aclose(self) -> None:
        """Disconnect (the session and its unacknowledged messages stay at the local broker)."""
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
        if self._acker is not None:
            self._acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acker

    def statistics(self) -> dict[str, Any]:
        """Counters of the local side, for the stats file."""
        return {
            "host": f"{self.host}:{self.port}",
            "connected": self.connected,
            "connects": self.connects,
            "received": self.received,
            "committed": self.committed,
            "refused": self.refused,
            "injected": self.injected,
        }

    async def inject(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish a downlink message to the local broker (never comes back: no-local)."""
        self.client.publish(topic, payload, qos=qos, retain=retain)
        self.injected += 1

    # ---- paho thread ------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self._ratelog.warning("connect", "local broker %s:%s refused the bridge: %s", self.host, self.port, rc)
            return
        self.connects += 1
        self.connected = True
        filters = [(r.pattern, SubscribeOptions(qos=1, noLocal=True)) for r in self.uplink_map.rules]
        client.subscribe(filters)
        self._call(self._up.set)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected = False
        self._ratelog.warning("down", "local broker %s:%s connection lost: %s", self.host, self.port, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self._take, msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid)

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(fn, *args)

    # ---- event loop -------------------------------------------------------------------
    def _take(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int) -> None:
        """Runs on the loop in arrival order: start the append now (order), ack it later."""
        self.received += 1
        rule = self.uplink_map.rule_for_local(topic)
        record = Record(
            topic=topic,
            payload=payload,
            qos=min(qos, 1),
            retain=retain,
            device=device_key(topic) or "",
            overflow="reject_new" if rule is not None and rule.overflow == "reject_new" else "drop_oldest",
        )
        # ``Store.append`` enqueues when the task first runs; tasks start in FIFO order.
        task = asyncio.ensure_future(self.store.append(record))
        self._acks.put_nowait((mid, qos, task))

    async def _ack_in_order(self) -> None:
        while True:
            item = await self._acks.get()
            if item is None:
                return
            mid, qos, task = item
            try:
                await task
            except StoreError as exc:
                self.refused += 1
                self._ratelog.warning("refused", "buffer refused a message from the local broker: %s", exc)
                self._reconnect_soon()
                continue
            self.committed += 1
            if qos > 0:
                self.client.ack(mid, qos)

    def _reconnect_soon(self) -> None:
        """Drop the session's connection so the local broker redelivers what we did not ack."""
        if self._reconnecting:
            return
        self._reconnecting = True

        async def bounce() -> None:
            try:
                await asyncio.sleep(RECONNECT_AFTER_REFUSAL_S)
                # paho's network thread reconnects by itself after a disconnect it did not ask for.
                sock = self.client.socket()
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            finally:
                self._reconnecting = False

        self._bounce = asyncio.ensure_future(bounce())
