"""The broker's fast path keeps each client's order and acknowledges everything (issue 9).

A real edge node (``python -m edgemq broker edge``) with no cloud running, so every
uplink message stays in its SQLite buffer: QoS 1 messages from paho publishers must
all be acknowledged, reach a local subscriber in each publisher's order, and sit in
the buffer in each publisher's order (``seq`` order).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgemq.node import buffer_path
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.timeout(240)]


def _publish_all(port: int, client_id: str, topic: str, payloads: list[bytes], acked: list[int]) -> None:
    """Publish ``payloads`` at QoS 1 with up to 100 in flight; count the PUBACKs received."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    got = threading.Event()
    count = [0]

    def on_publish(c: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        count[0] += 1
        if count[0] == len(payloads):
            got.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        for p in payloads:
            client.publish(topic, p, qos=1)
        got.wait(120)
    finally:
        acked.append(count[0])
        client.disconnect()
        client.loop_stop()


def _buffered(path: Path) -> list[tuple[str, bytes]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [(t, bytes(p)) for t, p in db.execute("SELECT topic, payload FROM messages ORDER BY seq")]
    finally:
        db.close()


def _run(harness: Any, collectors: Any, publishers: int, per_publisher: int) -> None:
    h = harness(brokers=1)
    ref = "plant-1/a1"
    h.start_edge(ref)  # no cloud: the uplink keeps retrying, everything stays buffered
    site, b = h.cfg.locate(ref)
    local = collectors(b.host, b.port, ["telemetry/#"])
    topics = [f"telemetry/{site.id}/dev-{i}/t" for i in range(publishers)]
    sent = {t: [b"%s-%06d" % (t.encode(), k) for k in range(per_publisher)] for t in topics}
    acked: list[int] = []
    threads = [
        threading.Thread(target=_publish_all, args=(b.port, f"order-pub-{i}", t, sent[t], acked), daemon=True)
        for i, t in enumerate(topics)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    total = publishers * per_publisher
    assert sorted(acked) == [per_publisher] * publishers, f"PUBACKs received per publisher: {acked}"

    wait_for(lambda: local.count() >= total, 60, "local subscriber has every message")
    by_topic: dict[str, list[bytes]] = defaultdict(list)
    for m in local.snapshot():
        by_topic[m.topic].append(m.payload)
    for t in topics:
        assert by_topic[t] == sent[t], f"local subscriber: {t} out of order or incomplete"

    buffered: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in _buffered(buffer_path(h.cfg, site.id, b.id)):
        buffered[topic].append(payload)
    for t in topics:
        assert buffered[t] == sent[t], f"buffer: {t} out of order or incomplete"


def test_5000_qos1_messages_from_one_publisher_keep_their_order(harness: Any, collectors: Any) -> None:
    _run(harness, collectors, publishers=1, per_publisher=5000)


def test_concurrent_publishers_each_keep_their_order(harness: Any, collectors: Any) -> None:
    _run(harness, collectors, publishers=20, per_publisher=300)
