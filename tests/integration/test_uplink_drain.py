"""A 20,000-message backlog drains completely and in order into Debian's Mosquitto.

The backlog is written straight into the edge node's SQLite buffer file before the
node starts (the state after an outage, without waiting for a fleet to build it), then
the node drains it through the uplink's own MQTT client into Mosquitto over MQTT 5.
A Mosquitto subscriber checks the count, the stable ids ``plant-1/a1/{seq}`` (every
seq once, in seq order) and the payloads; the buffer ends empty with its books balanced.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bridge.buffer import Buffer, Record
from edgemq.node import buffer_path
from tests.integration.conftest import Harness, wait_for

pytestmark = [pytest.mark.timeout(400), pytest.mark.interop]

N = 20_000
DEVICES = 50


def _prefill(h: Harness) -> None:
    path = buffer_path(h.cfg, "plant-1", "a1")
    buf = Buffer.open(path, max_messages=h.cfg.buffer.max_messages, max_bytes=h.cfg.buffer.max_bytes)
    try:
        now = time.time()
        for start in range(0, N, 1000):
            recs = [
                Record(
                    topic=f"telemetry/plant-1/dev-{i % DEVICES}/t",
                    payload=f"{i}".encode(),
                    device=f"plant-1/dev-{i % DEVICES}",
                )
                for i in range(start, start + 1000)
            ]
            result = buf.append_many(recs, now)
            assert result.stored == len(recs)
    finally:
        buf.close()


def test_backlog_of_20000_drains_in_order_into_mosquitto(harness: Any, collectors: Any, mosquitto: Any) -> None:
    host, port = mosquitto()
    h: Harness = harness(brokers=1, cloud_embedded=False, cloud_port=port, cloud={"protocol": "5"})
    _prefill(h)
    cloud = collectors(host, port, ["telemetry/#"], v5=True)
    h.start_edge("plant-1/a1")
    wait_for(lambda: cloud.count("telemetry/") >= N, 300, f"{N} messages at mosquitto", interval=0.5)
    wait_for(lambda: (h.edge_stats("plant-1/a1").get("buffer") or {}).get("depth_messages") == 0, 30, "buffer empty")
    got = cloud.snapshot()
    ids = [m.properties.get("edgemq-id") for m in got]
    assert all(ids), "a message arrived without its stable id"
    seqs = [int(str(i).rsplit("/", 1)[1]) for i in ids]
    assert all(str(i).startswith("plant-1/a1/") for i in ids)
    # No outage, one connection: each message exactly once, in seq order.
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == N
    assert [int(m.payload) for m in got] == list(range(N))
    stats = h.edge_stats("plant-1/a1")
    buf = stats["buffer"]
    assert buf["forwarded"] == N and buf["depth_messages"] == 0
    assert buf["accepted"] == buf["forwarded"] + sum(buf["dropped"].values()) + buf["depth_messages"]
    assert stats["uplink"]["resent"] == 0 and stats["uplink"]["refused_upstream"] == 0
