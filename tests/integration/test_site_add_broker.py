"""Adding a fourth broker to a running site (docs/site.md, "Adding and removing a broker").

a1..a3 run from the old cluster file and are not restarted. a4 starts from the new file:
it links to them, they learn it from its pushed state and link back, so site-wide
subscriptions and membership include it at once. A fleet that then runs with the new
ring (the new file, or the new ring document) moves exactly the devices a4 now owns,
to a4, and no other device changes broker.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from broker.config import SiteConfig
from broker.ring import Ring
from devices.fleet import Ack, FleetConfig, run_fleet
from tests.integration.conftest import Collector, Harness, to_toml, wait_for, wait_until_answers
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
    wait_for(lambda: json.loads((h.tmp / "run" / "stats" / f"{SITE}.a4.json").read_text())
             ["site_peers"]["peers"].get("a1", {}).get("interest", 0) >= 1, 30, "a4 knows a1's interest")
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
