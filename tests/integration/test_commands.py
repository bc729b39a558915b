"""Commands from the cloud, with real processes: one broker of the site delivers each to its device,
once; an offline device's commands wait at its keeper (durably, across a kill -9) and expire, uncounted
never; a device failed over while its owner is alive gets its command once, and no copy when it returns."""

from __future__ import annotations

import time
from typing import Any

import pytest

from broker.ring import Ring
from tests.integration.conftest import Harness, publish_once, wait_for

pytestmark = [pytest.mark.timeout(240)]

SITE = "plant-1"


def device_owned_by(h: Harness, broker: str, tag: str) -> str:
    """A fresh device id whose owner is ``broker`` (unique per test, so topics never collide)."""
    ring = Ring((b.id, b.weight) for b in h.cfg.sites[0].brokers)
    for i in range(10_000):
        device = f"cmd-{tag}-{i}"
        if ring.owner(f"{SITE}/{device}") == broker:
            return device
    raise AssertionError("no device found")


def commands(h: Harness, broker: str) -> dict[str, Any]:
    return dict(h.edge_stats(f"{SITE}/{broker}").get("commands") or {})


def routed(h: Harness, broker: str, what: str) -> int:
    return int((commands(h, broker).get("routed") or {}).get(what, 0))


def port(h: Harness, broker: str) -> int:
    return h.cfg.sites[0].broker(broker).port


def start(harness: Any, **kw: Any) -> Harness:
    h: Harness = harness(**kw)
    h.start_cloud()
    h.start_site()
    # every broker's uplink is up and every broker sees its peers alive (routing needs both)
    for b in h.cfg.sites[0].brokers:
        wait_for(
            lambda b=b: h.edge_stats(f"{SITE}/{b.id}").get("uplink", {}).get("state") == "connected",
            30,
            f"{b.id} uplink connected",
        )
        wait_for(
            lambda b=b: len(h.edge_stats(f"{SITE}/{b.id}").get("admission", {}).get("alive_peers", [])) == 2,
            30,
            f"{b.id} sees both peers alive",
        )
    return h


def test_a_command_for_an_offline_device_waits_at_its_owner_only_and_arrives_once(
    harness: Any, collectors: Any
) -> None:
    h = start(harness)
    device = device_owned_by(h, "a1", "offline")
    cloud = h.cfg.cloud
    publish_once(cloud.host, cloud.port, f"commands/{SITE}/{device}/reboot", b"1")
    publish_once(cloud.host, cloud.port, f"commands/{SITE}/{device}/set", b"2")
    wait_for(lambda: commands(h, "a1").get("depth") == 2, 30, "a1 keeps both commands")
    wait_for(
        lambda: routed(h, "a2", "not_mine") == 2 and routed(h, "a3", "not_mine") == 2, 30, "a2 and a3 leave them to a1"
    )
    dev = collectors("127.0.0.1", port(h, "a1"), [f"commands/{SITE}/{device}/#"], client_id=f"dev-{SITE}-{device}")
    wait_for(lambda: len(dev.snapshot()) >= 2, 30, "queued commands handed over")
    time.sleep(1.5)  # a second copy, if any, would come within a flush interval
    assert [(m.topic, m.payload) for m in dev.snapshot()] == [
        (f"commands/{SITE}/{device}/reboot", b"1"),
        (f"commands/{SITE}/{device}/set", b"2"),
    ]
    wait_for(lambda: commands(h, "a1").get("depth") == 0, 10, "a1's queue empty")
    stats = commands(h, "a1")
    assert stats["queued_total"] == stats["delivered_from_queue_total"] + stats["expired"] + stats["overflow"]


def test_a_queued_command_survives_a_kill_of_its_keeper(harness: Any, collectors: Any) -> None:
    h = start(harness)
    device = device_owned_by(h, "a1", "kill")
    publish_once(h.cfg.cloud.host, h.cfg.cloud.port, f"commands/{SITE}/{device}/reboot", b"after-crash")
    wait_for(lambda: commands(h, "a1").get("depth") == 1, 30, "a1 keeps the command")
    h.kill(f"{SITE}.a1")
    h.start_edge(f"{SITE}/a1")
    dev = collectors("127.0.0.1", port(h, "a1"), [f"commands/{SITE}/{device}/#"])  # any client id, named filter
    wait_for(lambda: len(dev.snapshot()) >= 1, 30, "the command after the restart")
    time.sleep(1.5)
    assert [m.payload for m in dev.snapshot()] == [b"after-crash"]


def test_an_expired_command_is_dropped_and_counted_never_fired(harness: Any, collectors: Any) -> None:
    h = start(harness, bridge={"command_ttl_s": 1.0})
    device = device_owned_by(h, "a2", "ttl")
    publish_once(h.cfg.cloud.host, h.cfg.cloud.port, f"commands/{SITE}/{device}/open-valve", b"late")
    wait_for(lambda: commands(h, "a2").get("expired") == 1, 30, "the command expires at a2")
    dev = collectors("127.0.0.1", port(h, "a2"), [f"commands/{SITE}/{device}/#"], client_id=f"dev-{SITE}-{device}")
    publish_once(h.cfg.cloud.host, h.cfg.cloud.port, f"commands/{SITE}/{device}/ping", b"fresh")
    wait_for(lambda: len(dev.snapshot()) >= 1, 30, "a fresh command still goes through")
    time.sleep(1.5)
    assert [m.payload for m in dev.snapshot()] == [b"fresh"]
    assert commands(h, "a2")["depth"] == 0


def test_a_device_failed_over_while_its_owner_lives_gets_a_command_once_and_no_copy_at_home(
    harness: Any, collectors: Any
) -> None:
    h = start(harness)
    device = device_owned_by(h, "a1", "away")
    ring = Ring((b.id, b.weight) for b in h.cfg.sites[0].brokers)
    second = ring.preference(f"{SITE}/{device}", 2)[1]
    cid = f"dev-{SITE}-{device}"
    # Home first with a persistent session (so a1 keeps its subscription), then away at its 2nd preference.
    home = collectors("127.0.0.1", port(h, "a1"), [f"commands/{SITE}/{device}/#"], client_id=cid, clean_session=False)
    home.close()
    away = collectors("127.0.0.1", port(h, second), [f"commands/{SITE}/{device}/#"], client_id=cid)
    # a1 knows the device is at `second` (presence over the peer links) before the command comes
    seen = collectors("127.0.0.1", port(h, "a1"), [f"edgemq/{SITE}/{second}/presence/{device}"])
    wait_for(lambda: any(b'"online"' in m.payload for m in seen.snapshot()), 30, f"a1 sees {device} at {second}")
    publish_once(h.cfg.cloud.host, h.cfg.cloud.port, f"commands/{SITE}/{device}/blink", b"once")
    wait_for(lambda: len(away.snapshot()) >= 1, 30, "the command at the broker the device is on")
    wait_for(lambda: routed(h, "a1", "not_mine") == 1, 30, "a1 leaves it to the broker the device is on")
    assert commands(h, "a1").get("depth") == 0
    away.close()
    back = collectors("127.0.0.1", port(h, "a1"), [f"commands/{SITE}/{device}/#"], client_id=cid, clean_session=False)
    time.sleep(2.0)
    assert [m.payload for m in away.snapshot()] == [b"once"]
    assert back.snapshot() == [], "a copy was queued in the device's old session at its owner"
