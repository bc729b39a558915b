"""One peer link: this broker's MQTT client connection to one other broker of its site.

What it does (docs/site.md):

* **pushes** messages published locally on this broker to the peer, as client
  ``peer-{site}-{me}``: the peer delivers them to its local subscribers only (never
  uplinked, never forwarded again: one hop, loop-free by construction);
* **pulls** the peer's control topics (its state, interest and presence records,
  ``broker.membership.control_filters``), retained, and hands each to ``on_control``
  on the event loop;
* **pushes** this broker's state document once per connection (``hello``), so a
  peer whose cluster file does not list this broker yet learns its address and links
  back (a broker added to a running site);
* carries a **will** on ``edgemq/{site}/{me}/state`` saying offline, so the peer's
  copy of this broker's state goes offline when this process dies;
* reconnects with capped, jittered back-off (``bridge.backoff``), like the uplink.

What it does not do: decide what to forward (``wants`` answers from the peer's
interest document; the caller asks), queue while down (a message offered while the
link is down is counted as dropped: the cloud path through the buffer is the durable
one), or deduplicate.

The paho client runs its network loop in a worker thread per connection
(``asyncio.to_thread``); ``publish`` is paho's thread-safe enqueue and never blocks
the event loop; paho's callbacks come back to the loop through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge.backoff import Backoff
from broker.client_auth import ClientLogin
from broker.interest import Interest
from broker.membership import control_filters, offline_state, peer_client_id, state_topic
from broker.ratelog import RateLimitedLog

__all__ = ["PeerLink", "PeerLinkStats"]

log = logging.getLogger(__name__)

KEEPALIVE_S = 10
HEALTHY_AFTER_S = 10.0
MAX_QUEUED = 10_000

ControlHandler = Callable[[str, str, bytes], None]
"""(peer id, topic, payload) of a control message, called on the event loop."""
LinkHandler = Callable[[str, bool], None]
"""(peer id, up) when the link connects or drops, called on the event loop."""


@dataclass(frozen=True)
class PeerLinkStats:
    """Snapshot of one peer link."""

    peer: str
    state: str
    connects: int
    forwarded: int
    forwarded_bytes: int
    dropped: int
    interest: tuple[str, ...]


class PeerLink:
    """Client connection from this broker (``me``) to the peer broker at ``host:port``."""

    def __init__(
        self,
        site: str,
        me: str,
        peer: str,
        host: str,
        port: int,
        *,
        on_control: ControlHandler,
        on_link: LinkHandler,
        hello: Callable[[], bytes] | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 5.0,
        rng: random.Random | None = None,
        login: ClientLogin | None = None,
        tls_port: int | None = None,
    ) -> None:
        if login is not None:  # credentials and TLS of the secure profile (broker.client_auth)
            host, port = login.endpoint(host, port, tls_port)
        self.site, self.me, self.peer, self.host, self.port = site, me, peer, host, port
        self.on_control, self.on_link, self.hello = on_control, on_link, hello
        self.interest = Interest()
        self.state = "connecting"
        self.connects = self.forwarded = self.forwarded_bytes = self.dropped = 0
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s, rng or random.Random())
        self._up = False
        self._stop = threading.Event()
        self._ratelog = RateLimitedLog(log)
        self._loop: asyncio.AbstractEventLoop | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=peer_client_id(site, me),
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.will_set(state_topic(site, me), offline_state(site, me), qos=1, retain=True)
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.enable_logger(logging.getLogger("bridge.peer.paho"))
        if login is not None:
            login.paho_apply(client)
        self._client = client

    # -- forwarding (event loop) -----------------------------------------------------

    def wants(self, topic: str) -> bool:
        """True if the peer's interest matches ``topic`` (never while the link is down)."""
        return self._up and self.interest.wants(topic)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Enqueue a forwarded message (paho's thread-safe publish; does not block)."""
        if not self._up:
            self.dropped += 1
            return
        info = self._client.publish(topic, payload, min(qos, 1), retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.forwarded += 1
            self.forwarded_bytes += len(payload)
        else:
            self.dropped += 1

    def statistics(self) -> PeerLinkStats:
        return PeerLinkStats(
            self.peer,
            self.state,
            self.connects,
            self.forwarded,
            self.forwarded_bytes,
            self.dropped,
            self.interest.filters,
        )

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve until the connection drops, back off, repeat (until cancelled or closed)."""
        self._loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            began = self._loop.time()
            try:
                await asyncio.to_thread(self._serve)
            except OSError as exc:
                log.debug("peer link %s -> %s (%s:%s): %s", self.me, self.peer, self.host, self.port, exc)
            self._set_down()
            if self._stop.is_set():
                return
            if self._loop.time() - began > HEALTHY_AFTER_S:
                self._backoff.reset()
            await asyncio.sleep(self._backoff.next_delay())

    def close(self) -> None:
        """Say offline to the peer (a clean DISCONNECT fires no will) and stop."""
        self._stop.set()
        if self._up:
            self._client.publish(state_topic(self.site, self.me), offline_state(self.site, self.me), 1, True)
        self._client.disconnect()

    def _serve(self) -> None:
        """Worker thread: one connection, its network loop until it ends."""
        client = self._client
        client.connect(self.host, self.port, keepalive=KEEPALIVE_S)
        while not self._stop.is_set():
            if client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
                break
        if self._stop.is_set():
            # Let the offline state and the DISCONNECT that close() queued go out.
            for _ in range(10):
                if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break

    def _set_down(self) -> None:
        was_up, self._up = self._up, False
        self.interest = Interest()
        self.state = "closed" if self._stop.is_set() else "down"
        if was_up:
            log.info("peer link %s -> %s down", self.me, self.peer)
            self.on_link(self.peer, False)

    # -- paho callbacks (worker thread) ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            self._ratelog.warning("refused", "peer %s refused link from %s: %s", self.peer, self.me, rc)
            client.disconnect()
            return
        client.subscribe([(f, 1) for f in control_filters(self.site, self.peer)])
        if self.hello is not None:
            # Our own state, pushed: a peer started from an older cluster file learns us from it.
            client.publish(state_topic(self.site, self.me), self.hello(), 1, True)
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._set_up)

    def _set_up(self) -> None:
        self._up = True
        self.connects += 1
        self.state = "up"
        log.info("peer link %s -> %s up (%s:%s)", self.me, self.peer, self.host, self.port)
        self.on_link(self.peer, True)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.on_control, self.peer, msg.topic, bytes(msg.payload))
