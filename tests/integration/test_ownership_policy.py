"""The sites' ownership_policy on real edge processes: 'refuse' sends a device to its
owner while the owner answers, and admits it as a failover once the owner is dead."""

from __future__ import annotations

import json
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from broker.ring import Ring
from tests.integration.conftest import Harness, free_port, wait_for

pytestmark = [pytest.mark.timeout(120)]


def connack_code(host: str, port: int, client_id: str) -> int:
    """CONNECT with paho; the reason code (0 accepted; paho reports 3.1.1's 0x05 as 135, not authorized)."""
    result: dict[str, int] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.on_connect = lambda c, u, f, rc, p=None: result.setdefault("rc", rc.value)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        wait_for(lambda: "rc" in result, 15, f"CONNACK from {port}")
    finally:
        client.disconnect()
        client.loop_stop()
    return result["rc"]


def test_refuse_policy_sends_devices_home_until_the_owner_dies(harness: Any) -> None:
    brokers = [{"id": f"a{i}", "host": "127.0.0.1", "port": free_port()} for i in (1, 2, 3)]
    h: Harness = harness(sites=[{"id": "plant-1", "ownership_policy": "refuse", "brokers": brokers}])
    h.start_cloud()
    h.start_site()
    ring = Ring((b["id"], 1.0) for b in brokers)
    device = next(f"pump-{i}" for i in range(100) if ring.owner(f"plant-1/pump-{i}") == "a1")
    cid = f"dev-plant-1-{device}"
    a1, a2 = h.cfg.sites[0].brokers[0], h.cfg.sites[0].brokers[1]

    # Liveness is probed every ~2 s; wait until a2 has seen a1 answer.
    wait_for(
        lambda: "a1" in h.edge_stats("plant-1/a2").get("admission", {}).get("alive_peers", []), 30, "a2 sees a1 alive"
    )
    assert connack_code(a2.host, a2.port, cid) == 135, "a foreign device was admitted while its owner is alive"
    assert connack_code(a1.host, a1.port, cid) == 0
    # Clients that are not devices of this site are never refused.
    assert connack_code(a2.host, a2.port, f"dashboard-{uuid.uuid4().hex[:6]}") == 0

    h.kill("plant-1.a1")
    wait_for(lambda: connack_code(a2.host, a2.port, cid) == 0, 30, "failover admitted once a1 is dead", interval=1)
    wait_for(lambda: "a1" not in h.edge_stats("plant-1/a2")["admission"]["alive_peers"], 10, "stats catch up")
    assert h.edge_stats("plant-1/a2")["admission"]["refused"] >= 1


def test_every_edge_broker_serves_the_ring_document(harness: Any, collectors: Any) -> None:
    """A plain-MQTT device reads edgemq/{site}/ring (retained) from any broker and can compute its owner."""
    h: Harness = harness()
    h.start_cloud()
    h.start_site()
    for b in h.cfg.sites[0].brokers:
        sub = collectors(b.host, b.port, ["edgemq/plant-1/ring"])
        wait_for(lambda sub=sub: sub.count() >= 1, 15, f"ring document at {b.id}")
        doc = json.loads(sub.snapshot()[0].payload)
        assert sub.snapshot()[0].retain
        assert sorted(x["id"] for x in doc["brokers"]) == ["a1", "a2", "a3"]
        assert {x["port"] for x in doc["brokers"]} == {x.port for x in h.cfg.sites[0].brokers}
