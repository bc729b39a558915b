"""Persistent sessions outlive an edge broker restart (issue 5): a device that subscribed with clean
session off finds "session present" and its subscriptions after the broker is killed and restarted."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.integration.conftest import Harness, publish_once, wait_for

pytestmark = [pytest.mark.timeout(180)]

SITE = "plant-1"


class Device:
    """A paho client with a fixed client id; records session-present flags and messages."""

    def __init__(self, port: int, client_id: str, *, clean: bool, subscribe: str | None = None) -> None:
        self.session_present: list[bool] = []
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
            self.session_present.append(bool(flags.session_present))
            if subscribe is not None:
                c.subscribe(subscribe, qos=1)
            else:
                ready.set()

        def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.got.append((msg.topic, bytes(msg.payload)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert ready.wait(15), "device did not connect"

    def messages(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_persistent_session_survives_a_kill_of_the_broker(harness: Any) -> None:
    h: Harness = harness(brokers=1)
    h.start_cloud()
    h.start_site()
    port = h.cfg.sites[0].brokers[0].port
    topic = f"commands/{SITE}/keep-1"
    dev = Device(port, "dev-plant-1-keep-1", clean=False, subscribe=f"{topic}/#")
    assert dev.session_present == [False]
    dev.close()
    h.kill(f"{SITE}.a1")
    h.start_edge(f"{SITE}/a1")
    # While the device is away, after the restart: an operator at the site sends it something.
    publish_once("127.0.0.1", port, f"{topic}/local-op", b"while-away")
    back = Device(port, "dev-plant-1-keep-1", clean=False)  # does not subscribe again
    wait_for(
        lambda: back.messages() == [(f"{topic}/local-op", b"while-away")],
        20,
        f"queued message after restart (session present {back.session_present}, got {back.messages()})",
    )
    assert back.session_present == [True]
    publish_once("127.0.0.1", port, f"{topic}/now", b"live")
    wait_for(lambda: len(back.messages()) == 2, 20, "live message on the restored subscription")
    back.close()
    # A clean-session connect deletes the session, and the deletion survives a restart too.
    Device(port, "dev-plant-1-keep-1", clean=True).close()
    h.stop(f"{SITE}.a1")
    h.start_edge(f"{SITE}/a1")
    again = Device(port, "dev-plant-1-keep-1", clean=False)
    assert again.session_present == [False]
    again.close()
