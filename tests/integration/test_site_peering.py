"""One site, one broker cluster: site-wide subscriptions over peer links (docs/site.md).

Real edge processes on loopback, the cloud never started (the uplink is down the whole
time): a subscriber on any broker sees what devices publish on the others, exactly
once; nothing crosses to a broker where nobody subscribes; a peer killed with SIGKILL
and restarted causes no loop and no duplicates.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.integration.conftest import Collector, Harness, wait_for

pytestmark = [pytest.mark.timeout(180)]

SITE = "plant-1"


def peers_of(h: Harness, ref: str) -> dict[str, Any]:
    return dict(h.edge_stats(ref).get("site_peers", {}).get("peers", {}))


def links_up(h: Harness) -> bool:
    site = h.cfg.sites[0]
    for b in site.brokers:
        peers = peers_of(h, f"{SITE}/{b.id}")
        if len(peers) != len(site.brokers) - 1 or any(p["state"] != "up" for p in peers.values()):
            return False
    return True


def wait_interest(h: Harness, of: str, at: list[str], at_least: int = 1) -> None:
    """Wait until brokers ``at`` know ``of``'s interest (``at_least`` filters)."""
    wait_for(
        lambda: all(peers_of(h, f"{SITE}/{b}").get(of, {}).get("interest", 0) >= at_least for b in at),
        30,
        f"interest of {of} at {at}",
    )


def publish_many(port: int, topic_payloads: list[tuple[str, bytes]], client_id: str | None = None) -> None:
    """Publish QoS 1 from one client and wait for every acknowledgement."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1) for t, p in topic_payloads]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def port_of(h: Harness, broker: str) -> int:
    return next(b.port for b in h.cfg.sites[0].brokers if b.id == broker)


def start_site(h: Harness) -> None:
    h.start_site()
    wait_for(lambda: links_up(h), 60, "every peer link up")


def test_subscriber_on_a1_sees_a2_and_a3_exactly_once_with_the_uplink_down(harness: Any, collectors: Any) -> None:
    h: Harness = harness()
    start_site(h)  # no cloud: every uplink stays down
    sub: Collector = collectors("127.0.0.1", port_of(h, "a1"), [f"telemetry/{SITE}/#"])
    local2: Collector = collectors("127.0.0.1", port_of(h, "a2"), [f"telemetry/{SITE}/#"])
    wait_interest(h, "a1", ["a2", "a3"])
    wait_interest(h, "a2", ["a1", "a3"])
    n = 100
    sent = {
        b: [(f"telemetry/{SITE}/dev-{b}-{i % 5}/temp", f"{b}:{i}".encode()) for i in range(n)] for b in ("a2", "a3")
    }
    for b, msgs in sent.items():
        publish_many(port_of(h, b), msgs)
    # A marker after the payloads: once it is in, anything late (a duplicate) would be too.
    for b in ("a2", "a3"):
        publish_many(port_of(h, b), [(f"telemetry/{SITE}/marker/{b}", b"end")])
    wait_for(lambda: sub.count(f"telemetry/{SITE}/marker/") == 2, 60, "markers at a1")
    wait_for(lambda: local2.count(f"telemetry/{SITE}/marker/") == 2, 60, "markers at a2")

    got = Counter(m.payload for m in sub.snapshot() if "/marker/" not in m.topic)
    expected = Counter(p for msgs in sent.values() for _, p in msgs)
    assert got == expected, f"missing {expected - got}, extra {got - expected}"
    # a2's own subscriber gets its local messages once (not back from a peer) and a3's once.
    got2 = Counter(m.payload for m in local2.snapshot() if "/marker/" not in m.topic)
    assert got2 == expected, f"at a2: missing {expected - got2}, extra {got2 - expected}"
    # Counted on both sides: a2 forwarded to a1 what a1 received from a2.
    wait_for(lambda: peers_of(h, f"{SITE}/a1")["a2"]["received"] == n + 1, 30, "a1 counts a2's messages")
    assert peers_of(h, f"{SITE}/a2")["a1"]["forwarded"] == n + 1
    assert h.edge_stats(f"{SITE}/a1")["uplink"]["state"] != "connected"


def test_messages_cross_only_to_a_peer_with_a_matching_subscriber(harness: Any, collectors: Any) -> None:
    h: Harness = harness()
    start_site(h)
    collectors("127.0.0.1", port_of(h, "a1"), [f"telemetry/{SITE}/+/temp"])
    wait_interest(h, "a1", ["a2"])
    temps = [(f"telemetry/{SITE}/d{i}/temp", b"t") for i in range(10)]
    hums = [(f"telemetry/{SITE}/d{i}/hum", b"h" * 100) for i in range(50)]
    publish_many(port_of(h, "a2"), hums + temps)
    wait_for(lambda: peers_of(h, f"{SITE}/a1")["a2"]["received"] >= 10, 30, "temps at a1")
    publish_many(port_of(h, "a2"), [(f"telemetry/{SITE}/marker/temp", b"end")])
    wait_for(lambda: peers_of(h, f"{SITE}/a1")["a2"]["received"] >= 11, 30, "marker at a1")
    a2 = peers_of(h, f"{SITE}/a2")
    assert a2["a1"]["forwarded"] == 11, a2  # the temps and the marker, none of the 50 hums
    assert a2["a1"]["forwarded_bytes"] == 10 * 1 + 3
    assert a2["a3"]["forwarded"] == 0, a2  # nobody subscribes at a3
    assert a2["a3"]["interest"] == 0
    assert peers_of(h, f"{SITE}/a3")["a2"]["received"] == 0


def test_peer_killed_and_restarted_causes_no_loop_or_duplicates(harness: Any, collectors: Any) -> None:
    h: Harness = harness()
    start_site(h)
    subs = {b: collectors("127.0.0.1", port_of(h, b), [f"telemetry/{SITE}/#"]) for b in ("a1", "a3")}
    wait_interest(h, "a1", ["a2", "a3"])
    wait_interest(h, "a3", ["a1", "a2"])
    publish_many(port_of(h, "a1"), [(f"telemetry/{SITE}/x/v", b"before-1-%d" % i) for i in range(30)])
    publish_many(port_of(h, "a3"), [(f"telemetry/{SITE}/y/v", b"before-3-%d" % i) for i in range(30)])

    h.kill(f"{SITE}.a2")  # SIGKILL: its peer links' wills fire at a1 and a3
    wait_for(lambda: peers_of(h, f"{SITE}/a1")["a2"]["state"] != "up", 30, "a1 sees a2 down")
    publish_many(port_of(h, "a1"), [(f"telemetry/{SITE}/x/v", b"during-1-%d" % i) for i in range(30)])

    h.start_edge(f"{SITE}/a2")
    wait_for(lambda: links_up(h), 60, "links up again after the restart")
    wait_interest(h, "a1", ["a2"])
    wait_interest(h, "a3", ["a2"])
    publish_many(port_of(h, "a2"), [(f"telemetry/{SITE}/z/v", b"after-2-%d" % i) for i in range(30)])
    publish_many(port_of(h, "a1"), [(f"telemetry/{SITE}/x/v", b"after-1-%d" % i) for i in range(30)])
    for b in ("a1", "a2", "a3"):
        publish_many(port_of(h, b), [(f"telemetry/{SITE}/marker/{b}", b"end")])
    for name, sub in subs.items():
        wait_for(lambda s=sub: s.count(f"telemetry/{SITE}/marker/") == 3, 60, f"markers at {name}")

    expected = Counter(
        [b"before-1-%d" % i for i in range(30)]
        + [b"before-3-%d" % i for i in range(30)]
        + [b"during-1-%d" % i for i in range(30)]
        + [b"after-2-%d" % i for i in range(30)]
        + [b"after-1-%d" % i for i in range(30)]
        + [b"end"] * 3
    )
    for name, sub in subs.items():
        got = Counter(m.payload for m in sub.snapshot())
        assert got == expected, f"at {name}: missing {expected - got}, extra {got - expected}"
    # No storm: what a1 received from peers is exactly what they forwarded to it.
    received = peers_of(h, f"{SITE}/a1")
    assert received["a3"]["received"] == 31
    assert received["a2"]["received"] == 31  # counted since a2's restart... by a1, across both a2 runs
