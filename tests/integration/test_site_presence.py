"""Presence and membership across a site's brokers (docs/site.md), uplink down.

A device whose connection to a1 goes silent reconnects at a2; a1's keep-alive expiry
then fires its will, which must not mark it offline (suppressed: the site knows it is
online at a2 since later). When nothing took its place, the will does fire and every
broker's subscribers see it. Membership: every broker holds every broker's state, and a
killed broker's state turns offline everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from broker.presence import PresenceTable
from broker.presence import decode as decode_presence
from tests.integration.conftest import Collector, Harness, wait_for
from tests.integration.test_site_peering import SITE, peers_of, port_of, start_site, wait_interest

pytestmark = [pytest.mark.timeout(180)]

DEVICE = "d1"
CLIENT_ID = f"dev-{SITE}-{DEVICE}"
STATUS = f"status/{SITE}/{DEVICE}"


def device(port: int, *, keepalive: int = 2) -> mqtt.Client:
    """A device connected with its will, 'online' published retained; its network loop not running."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, clean_session=False)
    c.will_set(STATUS, b"offline", qos=1, retain=True)
    c.connect("127.0.0.1", port, keepalive=keepalive)
    info = c.publish(STATUS, b"online", qos=1, retain=True)
    deadline = time.monotonic() + 15
    while not info.is_published() and time.monotonic() < deadline:
        c.loop(timeout=0.1)
    assert info.is_published()
    return c


def retained(port: int, topic_filter: str) -> dict[str, bytes]:
    """Retained messages matching ``topic_filter`` at a broker (read by a fresh subscriber)."""
    c = Collector("127.0.0.1", port, [topic_filter])
    try:
        time.sleep(0.5)  # retained messages arrive right after SUBACK; this is a read, not a proof
        return {m.topic: m.payload for m in c.snapshot() if m.retain}
    finally:
        c.close()


def presence_at(port: int) -> PresenceTable:
    table = PresenceTable()
    for topic, payload in retained(port, f"edgemq/{SITE}/+/presence/+").items():
        broker, dev = topic.split("/")[2], topic.split("/")[4]
        table.update(dev, decode_presence(payload, broker), broker)
    return table


def test_will_of_a_device_that_moved_is_suppressed_and_fires_when_it_did_not(harness: Any, collectors: Any) -> None:
    h: Harness = harness()
    start_site(h)
    watch3: Collector = collectors("127.0.0.1", port_of(h, "a3"), [f"status/{SITE}/#"])
    wait_interest(h, "a3", ["a1", "a2"])

    first = device(port_of(h, "a1"))  # then silent: no PINGREQ, the socket stays open
    wait_for(lambda: presence_at(port_of(h, "a3")).present_at(DEVICE) == "a1", 30, "a3 sees d1 at a1")
    second = device(port_of(h, "a2"), keepalive=2)
    second.loop_start()
    try:
        wait_for(lambda: presence_at(port_of(h, "a3")).present_at(DEVICE) == "a2", 30, "a3 sees d1 at a2")
        # a1 notices the silence after 1.5 x keep-alive and would fire the will now.
        wait_for(
            lambda: h.edge_stats(f"{SITE}/a1").get("site_peers", {}).get("wills_suppressed") == 1,
            30,
            "a1 suppressed the stale will",
        )
        assert [m.payload for m in watch3.snapshot() if m.topic == STATUS] == [b"online", b"online"]
        for b in ("a1", "a2", "a3"):
            assert retained(port_of(h, b), STATUS) == {STATUS: b"online"}, b
        table = presence_at(port_of(h, "a1"))
        assert table.present_at(DEVICE) == "a2"
        assert table.present(DEVICE) is not None

        # Now the device goes silent at a2 and reconnects nowhere: its will is not stale.
        second.loop_stop()
        wait_for(
            lambda: [m.payload for m in watch3.snapshot() if m.topic == STATUS][-1:] == [b"offline"],
            30,
            "the will reaches a3's subscriber",
        )
        assert h.edge_stats(f"{SITE}/a2")["site_peers"]["wills_suppressed"] == 0
        wait_for(lambda: presence_at(port_of(h, "a3")).present_at(DEVICE) is None, 30, "d1 offline everywhere")
    finally:
        for c in (first, second):
            c.loop_stop()
            sock = c.socket()
            if sock is not None:
                sock.close()


def test_every_broker_holds_every_brokers_state_and_a_killed_one_goes_offline(harness: Any) -> None:
    h: Harness = harness()
    start_site(h)

    def states(b: str) -> dict[str, dict[str, Any]]:
        found = retained(port_of(h, b), f"edgemq/{SITE}/+/state")
        return {t.split("/")[2]: json.loads(p) for t, p in found.items()}

    for b in ("a1", "a2", "a3"):
        s = states(b)
        assert sorted(s) == ["a1", "a2", "a3"], (b, s)
        assert all(d["state"] == "online" for d in s.values()), s
        assert {"version", "owned", "clients", "uplink", "backlog"} <= set(s[b]), s[b]
        assert s[b]["uplink"] != "connected"  # no cloud: membership works without it

    h.kill(f"{SITE}.a2")
    for b in ("a1", "a3"):
        wait_for(lambda b=b: states(b)["a2"]["state"] == "offline", 30, f"{b} sees a2 offline")
        wait_for(lambda b=b: peers_of(h, f"{SITE}/{b}")["a2"]["member"] == "offline", 30, f"{b} counts a2 out")


def test_cluster_status_reads_membership_from_a_site_broker_with_the_cloud_down(harness: Any) -> None:
    h: Harness = harness()
    start_site(h)

    def members() -> dict[str, str]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgemq",
                "cluster",
                "status",
                "--config",
                str(h.config_path),
                "--json",
                "--from-site",
                SITE,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(h.tmp),
            check=True,
        ).stdout
        return {r["component"]: r.get("member") for r in json.loads(out)}

    wait_for(
        lambda: (
            {k: v for k, v in members().items() if k.startswith(SITE)}
            == {f"{SITE}.a1": "online", f"{SITE}.a2": "online", f"{SITE}.a3": "online"}
        ),
        60,
        "three online",
    )
    h.kill(f"{SITE}.a1")  # the first broker of the site: status must fall back to a2
    wait_for(lambda: members().get(f"{SITE}.a1") == "offline", 60, "a1 offline, read from a2")


def test_a_restarted_peers_old_presence_copies_are_cleared(harness: Any) -> None:
    h: Harness = harness()
    start_site(h)
    topic = f"edgemq/{SITE}/a2/presence/{DEVICE}"
    dev = device(port_of(h, "a2"), keepalive=30)  # no network loop: it will not reconnect by itself
    try:
        wait_for(
            lambda: json.loads(retained(port_of(h, "a1"), topic).get(topic, b"{}")).get("state") == "online",
            30,
            "a1 holds a2's record of d1",
        )
        h.kill(f"{SITE}.a2")
        h.start_edge(f"{SITE}/a2")
        wait_for(lambda: peers_of(h, f"{SITE}/a1").get("a2", {}).get("state") == "up", 60, "a1 linked to a2 again")
        # The restarted a2 has no record of d1 (the device did not come back): a1's copy must
        # go, not linger as 'online' nor come back as an empty retained message.
        wait_for(
            lambda: topic not in retained(port_of(h, "a1"), f"edgemq/{SITE}/+/presence/+"),
            30,
            "a1's copy of a2's old record cleared",
        )
    finally:
        sock = dev.socket()
        if sock is not None:
            sock.close()


def test_presence_records_reach_the_cloud_when_an_uplink_rule_takes_them(harness: Any, collectors: Any) -> None:
    rules = [{"pattern": p, "qos": 1} for p in ("telemetry/#", "status/#", "edgemq/+/+/presence/#")]
    h: Harness = harness(bridge={"uplink": rules})
    h.start_cloud()
    cloud: Collector = collectors(h.cfg.cloud.host, h.cfg.cloud.port, [f"edgemq/{SITE}/+/presence/+", STATUS])
    start_site(h)
    dev = device(port_of(h, "a3"), keepalive=30)
    dev.disconnect()  # clean: no will, and a3 writes an offline record
    for _ in range(50):  # the device has no network thread: send the DISCONNECT
        if dev.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
            break
    topic = f"edgemq/{SITE}/a3/presence/{DEVICE}"

    def states() -> list[str]:
        return [json.loads(m.payload)["state"] for m in cloud.snapshot() if m.topic == topic]

    wait_for(lambda: states() == ["online", "offline"], 60, "a3's records at the cloud, in order")
    records = [decode_presence(m.payload, "a3") for m in cloud.snapshot() if m.topic == topic]
    assert all(r is not None and r.broker == "a3" for r in records)
    assert [m.payload for m in cloud.snapshot() if m.topic == STATUS] == [b"online"]
