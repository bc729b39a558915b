"""Adding a fourth broker to a running site (docs/site.md, "Adding and removing a broker").

a1..a3 run from the old cluster file and are not restarted. a4 starts from the new file:
it links to them, they learn it from its pushed state and link back, so site-wide
subscriptions and membership include it at once. A fleet that then runs with the new
ring (the new file, or the new ring document) moves exactly the devices a4 now owns,
to a4, and no other device changes broker.

The second test is the live case: a fleet started on the old ring keeps running while
a4 joins; a1..a3 take a4 into their ring and re-publish the ring document (retained);
the devices read it on the broker they are on, and exactly a4's share moves to a4,
spread over the move window, each after the hold-down; nobody else moves, and every
acknowledged message reaches the cloud.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest

from broker.config import SiteConfig
from broker.ownership import ring_document, ring_topic
from broker.ring import Ring
from devices.fleet import Ack, FleetConfig, run_fleet
from tests.integration.conftest import Collector, Harness, to_toml, wait_for, wait_until_answers
from tests.integration.test_failover import LiveFleet
from tests.integration.test_site_peering import SITE, links_up, peers_of, port_of, publish_many, wait_interest

pytestmark = [pytest.mark.timeout(240)]

DEVICES = 40


def brokers_of(site: SiteConfig, messages: int = 3) -> dict[str, str]:
    """Run a fleet once against ``site``; the broker each device's messages were acknowledged by."""
    acks: list[Ack] = []
    cfg = FleetConfig(site=site, devices=DEVICES, rate=20.0, messages=messages, duration_s=60, seed=11)
    result = asyncio.run(run_fleet(cfg, on_ack=acks.append))
    assert result.stats.acked == DEVICES * messages, result.stats
    where: dict[str, set[str]] = {}
    for a in acks:
        where.setdefault(a.device, set()).add(a.broker)
    assert all(len(b) == 1 for b in where.values()), where  # every device stayed at one broker
    return {d: next(iter(b)) for d, b in where.items()}


def test_fourth_broker_joins_a_running_site_and_takes_only_its_share(harness: Any, collectors: Any) -> None:
    h: Harness = harness(brokers=4)
    new_cfg = h.cfg
    old_site = new_cfg.sites[0].model_copy(update={"brokers": new_cfg.sites[0].brokers[:3]})
    h.cfg = new_cfg.model_copy(update={"sites": [old_site]})
    h.write_config()
    h.start_site()
    wait_for(lambda: links_up(h), 60, "a1..a3 linked")
    before = brokers_of(old_site)

    new_path = h.tmp / "cluster-new.toml"
    new_path.write_text(to_toml(new_cfg))
    h._spawn(f"{SITE}.a4", ["broker", "edge", "--config", str(new_path), "--broker", f"{SITE}/a4"])
    a4 = new_cfg.sites[0].brokers[3]
    assert wait_until_answers(a4.host, a4.port, 30), h.logs()

    # a1..a3 (old file) discover a4 from its pushed state and link back.
    for b in ("a1", "a2", "a3"):
        wait_for(lambda b=b: peers_of(h, f"{SITE}/{b}").get("a4", {}).get("state") == "up", 60, f"{b} linked to a4")
        assert h.edge_stats(f"{SITE}/{b}")["site_peers"]["discovered"] == ["a4"]
    # Site-wide subscriptions include it, both ways.
    at4: Collector = collectors(a4.host, a4.port, [f"telemetry/{SITE}/#"])
    at1: Collector = collectors("127.0.0.1", port_of(h, "a1"), [f"telemetry/{SITE}/#"])
    wait_interest(h, "a4", ["a1"])
    wait_for(lambda: (h.tmp / "run" / "stats" / f"{SITE}.a4.json").exists(), 30, "a4 stats")
    wait_for(
        lambda: (
            json.loads((h.tmp / "run" / "stats" / f"{SITE}.a4.json").read_text())["site_peers"]["peers"]
            .get("a1", {})
            .get("interest", 0)
            >= 1
        ),
        30,
        "a4 knows a1's interest",
    )
    publish_many(port_of(h, "a1"), [(f"telemetry/{SITE}/from-a1/v", b"1")])
    publish_many(a4.port, [(f"telemetry/{SITE}/from-a4/v", b"4")])
    wait_for(lambda: at4.count(f"telemetry/{SITE}/from-a1/") == 1, 30, "a1's message at a4")
    wait_for(lambda: at1.count(f"telemetry/{SITE}/from-a4/") == 1, 30, "a4's message at a1")

    # Devices with the new ring: exactly a4's share moves, to a4; nobody else moves.
    after = brokers_of(new_cfg.sites[0])
    ring = Ring((b.id, b.weight) for b in new_cfg.sites[0].brokers)
    should_move = {d for d in before if ring.owner(f"{SITE}/{d}") == "a4"}
    moved = {d for d in before if before[d] != after[d]}
    assert moved == should_move, (sorted(moved), sorted(should_move))
    assert all(after[d] == "a4" for d in moved)
    assert 0 < len(moved) < DEVICES / 2  # about a quarter: only a4's share


LIVE_DEVICES = 60
MOVE_WINDOW_S = 3.0
HOLD_DOWN_S = 1.0


def ring_digests(c: Collector) -> list[str]:
    return [json.loads(m.payload)["digest"] for m in c.snapshot() if m.payload]


def test_a_running_fleet_follows_the_new_ring_gradually(harness: Any, collectors: Any) -> None:
    h: Harness = harness(brokers=4)
    new_cfg = h.cfg
    new_site = new_cfg.sites[0]
    old_site = new_site.model_copy(update={"brokers": new_site.brokers[:3]})
    h.cfg = new_cfg.model_copy(update={"sites": [old_site]})
    h.write_config()
    h.start_cloud()
    h.start_site()
    wait_for(lambda: links_up(h), 60, "a1..a3 linked")
    cloud: Collector = collectors(h.cfg.cloud.host, h.cfg.cloud.port, ["telemetry/#"])
    old_ring = Ring((b.id, b.weight) for b in old_site.brokers)
    new_ring = Ring((b.id, b.weight) for b in new_site.brokers)
    devices = [f"dev-{i:04d}" for i in range(1, LIVE_DEVICES + 1)]
    old_owner = {d: old_ring.owner(f"{SITE}/{d}") for d in devices}
    new_owner = {d: new_ring.owner(f"{SITE}/{d}") for d in devices}
    movers = sorted(d for d in devices if new_owner[d] != old_owner[d])
    assert movers and all(new_owner[d] == "a4" for d in movers)  # rendezvous: only a4's share changes
    old_digest, new_digest = ring_document(old_site)["digest"], ring_document(new_site)["digest"]
    rings = {b.id: collectors(b.host, b.port, [ring_topic(SITE)]) for b in old_site.brokers}
    for b, c in rings.items():
        wait_for(lambda c=c: ring_digests(c) == [old_digest], 30, f"{b} serves the old ring")

    # The fleet starts on the OLD ring (its own copy of the old cluster file) and keeps running.
    cfg = FleetConfig(
        site=old_site,
        devices=LIVE_DEVICES,
        rate=2.0,
        duration_s=200,
        seed=3,
        reconnect_min_s=0.2,
        reconnect_max_s=2.0,
        probe_interval_s=0.3,
        probe_jitter=0.5,
        probe_timeout_s=1.0,
        hold_down_s=HOLD_DOWN_S,
        move_window_s=MOVE_WINDOW_S,
    )
    fleet = LiveFleet(cfg)
    try:
        wait_for(lambda: fleet.located() == old_owner, 60, "every device at its old owner")
        n = fleet.acked()
        wait_for(lambda: fleet.acked() > n + 100, 30, "fleet under way")

        new_path = h.tmp / "cluster-new.toml"
        new_path.write_text(to_toml(new_cfg))
        spawned_at = time.monotonic()  # a4 cannot answer a probe before this
        h._spawn(f"{SITE}.a4", ["broker", "edge", "--config", str(new_path), "--broker", f"{SITE}/a4"])
        a4 = new_site.broker("a4")
        assert wait_until_answers(a4.host, a4.port, 30), h.logs()

        # a1..a3 (old file, not restarted) take a4 into their ring and re-publish the document.
        for b, c in rings.items():
            wait_for(lambda c=c: new_digest in ring_digests(c), 60, f"{b} publishes the ring with a4")
        wait_for(lambda: fleet.located() == new_owner, 90, "a4's share at a4, everybody else where they were")
        n = fleet.acked()
        wait_for(lambda: fleet.acked() > n + 100, 30, "fleet under way on the new ring")
    finally:
        result = fleet.stop()

    # The document is retained, with a4 in it, at every old broker (a fresh subscriber gets it).
    for b in old_site.brokers:
        fresh: Collector = collectors(b.host, b.port, [ring_topic(SITE)])
        wait_for(lambda fresh=fresh: len(fresh.snapshot()) >= 1, 30, f"retained ring at {b.id}")
        doc = json.loads(fresh.snapshot()[-1].payload)
        assert doc["digest"] == new_digest and "a4" in [x["id"] for x in doc["brokers"]], (b.id, doc)
        assert h.edge_stats(f"{SITE}/{b.id}")["site_peers"]["discovered"] == ["a4"]

    # Exactly a4's share moved, once each, to a4, after the hold-down; nobody else moved.
    reports = {r.device: r for r in result.devices}
    for d in devices:
        path = [m.broker for m in reports[d].history]
        if d in movers:
            assert path == [old_owner[d], None, "a4"], (d, reports[d].history)
            assert reports[d].history[1].state == "returning" and reports[d].owner == "a4"
        else:
            assert path == [old_owner[d]], (d, reports[d].history)
    arrivals = sorted(reports[d].history[2].at for d in movers)
    assert arrivals[0] - spawned_at >= HOLD_DOWN_S, "a device moved before a full hold-down of healthy probes"
    # Gradually: the moves are spread over the window, not all in one instant (generous bound).
    assert len(movers) < 3 or arrivals[-1] - arrivals[0] >= MOVE_WINDOW_S / 3, arrivals

    # Nothing acknowledged is lost, and nothing unacknowledged appears.
    acks = list(fleet.acks)
    expected = Counter((a.topic, a.payload) for a in acks)
    wait_for(
        lambda: not expected - Counter((m.topic, m.payload) for m in cloud.snapshot()),
        120,
        "every acknowledged message at the cloud",
    )
    got = Counter((m.topic, m.payload) for m in cloud.snapshot())
    assert not set(got) - set(expected), "a message at the cloud was never acknowledged to a device"
    print(
        f"\n{len(movers)}/{LIVE_DEVICES} devices moved to a4 (window {MOVE_WINDOW_S}s, hold-down "
        f"{HOLD_DOWN_S}s): first {arrivals[0] - spawned_at:.2f}s, last {arrivals[-1] - spawned_at:.2f}s after "
        f"a4 was spawned; {len(acks)} acked, {sum(got.values()) - len(acks)} duplicates at the cloud"
    )
