"""The walking cluster end to end: real cloud and edge processes on loopback.

Telemetry from a fleet reaches the cloud complete and byte-for-byte; a command
published at the cloud reaches a client subscribed at the edge; nothing that came
down goes back up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest

from devices.fleet import Ack, FleetConfig, run_fleet
from tests.integration.conftest import Harness, publish_once, wait_for

pytestmark = [pytest.mark.timeout(180)]


def run_fleet_sync(h: Harness, devices: int, messages: int, rate: float = 20.0) -> tuple[list[Ack], Any]:
    acks: list[Ack] = []
    cfg = FleetConfig(site=h.cfg.sites[0], devices=devices, rate=rate, messages=messages, duration_s=120, seed=7)
    result = asyncio.run(run_fleet(cfg, on_ack=acks.append))
    return acks, result


def test_fleet_of_50_devices_reaches_cloud_complete(harness: Any, collectors: Any) -> None:
    h: Harness = harness()
    h.start_cloud()
    h.start_site()
    cloud = collectors(h.cfg.cloud.host, h.cfg.cloud.port, ["telemetry/#"])

    acks, result = run_fleet_sync(h, devices=50, messages=20)

    assert result.stats.acked == 50 * 20, result.stats
    assert len(acks) == 1000
    # Devices were spread over all three brokers.
    assert len({a.broker for a in acks}) == 3
    expected = Counter((a.topic, a.payload) for a in acks)
    wait_for(lambda: cloud.count("telemetry/") >= len(acks), 60, "all telemetry at the cloud")
    got = Counter((m.topic, m.payload) for m in cloud.snapshot() if m.topic.startswith("telemetry/"))
    missing = expected - got
    assert not missing, f"{sum(missing.values())} acknowledged messages never reached the cloud"
    assert got == expected, "extra or duplicated messages at the cloud"
    # Per-device order at the cloud is the order the device sent in.
    by_device: dict[str, list[int]] = {}
    for m in cloud.snapshot():
        body = json.loads(m.payload)
        by_device.setdefault(body["device"], []).append(body["seq"])
    assert all(seqs == sorted(seqs) for seqs in by_device.values())


def test_command_at_cloud_reaches_edge_subscriber(harness: Any, collectors: Any) -> None:
    h: Harness = harness()
    h.start_cloud()
    h.start_site()
    site = h.cfg.sites[0]
    edge = site.brokers[1]
    sub = collectors(edge.host, edge.port, [f"commands/{site.id}/pump-7/#"])
    up = collectors(h.cfg.cloud.host, h.cfg.cloud.port, ["commands/#", "telemetry/#"])

    # The bridge subscribes at the cloud after connecting; retry until the link is up.
    deadline = time.monotonic() + 30
    sent = 0
    while sub.count() == 0 and time.monotonic() < deadline:
        publish_once(h.cfg.cloud.host, h.cfg.cloud.port, f"commands/{site.id}/pump-7/reboot", b"now")
        sent += 1
        time.sleep(0.5)  # pacing of the retry, not a wait for a result
    assert sub.count() >= 1, "command never reached the edge subscriber"
    msg = sub.snapshot()[0]
    assert (msg.topic, msg.payload) == (f"commands/{site.id}/pump-7/reboot", b"now")

    # A command for another site does not come down to this one, and nothing that came
    # down goes back up. A marker command published last tells us everything before it
    # has been through the link.
    other = collectors(edge.host, edge.port, ["commands/#"])
    publish_once(h.cfg.cloud.host, h.cfg.cloud.port, "commands/plant-9/pump-7/reboot", b"no")
    publish_once(h.cfg.cloud.host, h.cfg.cloud.port, f"commands/{site.id}/marker/x", b"marker")
    sent += 1
    wait_for(lambda: any(m.payload == b"marker" for m in other.snapshot()), 30, "marker command at the edge")
    assert not [m for m in other.snapshot() if m.topic.startswith("commands/plant-9/")]
    # Loop-free: at the cloud each command appears exactly once (ours), never re-published.
    wait_for(lambda: any(m.payload == b"marker" for m in up.snapshot()), 30, "marker at the cloud subscriber")
    assert up.count(f"commands/{site.id}/") == sent


def test_edge_publish_reaches_cloud_and_state_is_retained(harness: Any, collectors: Any) -> None:
    h: Harness = harness(brokers=1)
    h.start_cloud()
    h.start_site()
    site = h.cfg.sites[0]
    b = site.brokers[0]
    cloud = collectors(h.cfg.cloud.host, h.cfg.cloud.port, ["telemetry/#", "edgemq/#"])
    publish_once(b.host, b.port, f"telemetry/{site.id}/pump-7/temp", b"21.5")
    wait_for(lambda: cloud.count("telemetry/") == 1, 30, "telemetry at the cloud")
    m = next(m for m in cloud.snapshot() if m.topic.startswith("telemetry/"))
    assert (m.topic, m.payload) == (f"telemetry/{site.id}/pump-7/temp", b"21.5")
    wait_for(lambda: cloud.count(f"edgemq/{site.id}/{b.id}/state") >= 1, 30, "retained bridge state")
    state = [m for m in cloud.snapshot() if m.topic.endswith("/state")][-1]
    assert json.loads(state.payload)["state"] == "online"

    # A metrics snapshot is published retained beside the state.
    wait_for(lambda: cloud.count(f"edgemq/{site.id}/{b.id}/stats") >= 1, 30, "stats snapshot at the cloud")
    stats = json.loads(next(m for m in cloud.snapshot() if m.topic.endswith("/stats")).payload)
    assert {"buffer", "uplink", "clients", "messages_in"} <= set(stats)
    assert stats["buffer"]["accepted"] >= 0 and stats["uplink"]["state"] == "connected"

    # The bridge's will marks the broker offline when its process dies abruptly.
    h.kill(f"{site.id}.{b.id}")
    wait_for(
        lambda: any(
            json.loads(x.payload).get("state") == "offline" for x in cloud.snapshot() if x.topic.endswith("/state")
        ),
        60,
        "offline state after kill -9",
    )


def test_non_uplink_topics_stay_local(harness: Any, collectors: Any) -> None:
    h: Harness = harness(brokers=1)
    h.start_cloud()
    h.start_site()
    b = h.cfg.sites[0].brokers[0]
    cloud = collectors(h.cfg.cloud.host, h.cfg.cloud.port, ["#"])
    local = collectors(b.host, b.port, ["local/#"])
    publish_once(b.host, b.port, "local/plc/setpoint", b"7")
    publish_once(b.host, b.port, "telemetry/plant-1/d1/t", b"1")
    wait_for(lambda: cloud.count("telemetry/") == 1, 30, "telemetry at the cloud")
    wait_for(lambda: local.count("local/") == 1, 10, "local message at the local subscriber")
    assert cloud.count("local/") == 0
