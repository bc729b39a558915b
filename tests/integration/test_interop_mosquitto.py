"""Interop: Debian's Mosquitto as the cloud broker instead of the embedded one.

The same flows as the walking-cluster tests, unchanged, plus MQTT 5 upstream: every
forwarded message carries its stable id ``{site}/{broker}/{seq}`` as a user property.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from devices.fleet import Ack, FleetConfig, run_fleet
from tests.integration.conftest import Harness, publish_once, wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.interop]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_fleet_through_mosquitto_cloud(harness: Any, collectors: Any, mosquitto: Any, protocol: str) -> None:
    host, port = mosquitto()
    h: Harness = harness(cloud_embedded=False, cloud_port=port, cloud={"protocol": protocol})
    h.start_site()
    cloud = collectors(host, port, ["telemetry/#"], v5=(protocol == "5"))

    acks: list[Ack] = []
    cfg = FleetConfig(site=h.cfg.sites[0], devices=20, rate=20, messages=10, duration_s=90, seed=3)
    result = asyncio.run(run_fleet(cfg, on_ack=acks.append))
    assert result.stats.acked == 200

    wait_for(lambda: cloud.count("telemetry/") >= 200, 60, "all telemetry at mosquitto")
    got = cloud.snapshot()
    assert Counter((m.topic, m.payload) for m in got) == Counter((a.topic, a.payload) for a in acks)
    if protocol == "5":
        ids = [m.properties.get("edgemq-id") for m in got]
        assert all(ids), "a message arrived without its stable id"
        assert len(set(ids)) == len(ids)
        for m in got:
            site, broker, seq = m.properties["edgemq-id"].split("/")
            assert site == "plant-1" and broker in {"a1", "a2", "a3"} and int(seq) > 0
            assert json.loads(m.payload)["site"] == "plant-1"


def test_command_from_mosquitto_cloud_reaches_edge(harness: Any, collectors: Any, mosquitto: Any) -> None:
    host, port = mosquitto()
    h: Harness = harness(cloud_embedded=False, cloud_port=port)
    h.start_site()
    b = h.cfg.sites[0].brokers[2]
    sub = collectors(b.host, b.port, ["commands/plant-1/#"])
    state = collectors(host, port, ["edgemq/#"])
    wait_for(lambda: state.count("edgemq/plant-1/") >= 3, 30, "three bridges online at mosquitto")
    publish_once(host, port, "commands/plant-1/pump-7/reboot", b"now")
    wait_for(lambda: sub.count() >= 1, 30, "command at the edge subscriber")
    assert sub.snapshot()[0].payload == b"now"
