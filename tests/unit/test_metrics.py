"""The metrics collector: a pure view of the stats snapshot; every metric documented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgemq.metrics import SnapshotCollector, metrics_port, registry_for

ROOT = Path(__file__).resolve().parents[2]

EDGE: dict[str, Any] = {
    "component": "plant-1.a1",
    "pid": 1,
    "address": "127.0.0.1:18831",
    "started": 100.0,
    "ts": 160.0,
    "site": "plant-1",
    "broker": "a1",
    "clients": 5,
    "messages_in": 10,
    "messages_out": 4,
    "messages_in_by_qos": {"0": 3, "1": 7, "2": 0},
    "messages_out_by_qos": {"0": 1, "1": 3, "2": 0},
    "dropped_out": 5,
    "dropped_in": 4,
    "bytes_in": 1000,
    "bytes_out": 400,
    "uplink_refused": 0,
    "append_failures": 0,
    "ownership": {"owned": 3, "foreign": 1, "unknown": 1},
    "uplink": {
        "state": "backoff",
        "connects": 2,
        "disconnects": 1,
        "forwarded": 7,
        "resent": 1,
        "inflight": 0,
        "commands_down": 2,
        "last_error": "x",
    },
    "buffer": {
        "depth_messages": 3,
        "depth_bytes": 300,
        "oldest_enqueued_at": 150.0,
        "oldest_age_s": 10.0,
        "head_seq": 8,
        "tail_seq": 10,
        "accepted": 10,
        "forwarded": 7,
        "dropped": {"ttl": 2, "capacity": 1},
        "peak_depth_messages": 5,
        "peak_depth_bytes": 500,
        "last_seq": 10,
        "max_messages": 100,
        "max_bytes": 4096,
        "commits": 9,
    },
    "site_peers": {
        "peers": {
            "a2": {
                "state": "up",
                "forwarded": 6,
                "forwarded_bytes": 60,
                "received": 3,
                "received_bytes": 30,
                "dropped": 1,
            },
            "a3": {
                "state": "down",
                "forwarded": 0,
                "forwarded_bytes": 0,
                "received": 0,
                "received_bytes": 0,
                "dropped": 0,
            },
        },
        "wills_suppressed": 2,
    },
    "commands": {
        "depth": 2,
        "oldest_age_s": 5.0,
        "expired": 1,
        "overflow": 0,
        "routed": {"delivered": 4, "queued": 3, "not_mine": 7},
    },
}


def samples(snapshot: dict[str, Any] | None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry_for(lambda: snapshot, process=False)).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_edge_snapshot_becomes_labelled_metrics() -> None:
    s = samples(EDGE)
    who = {("site", "plant-1"), ("broker", "a1")}
    assert s[("edgemq_messages_total", frozenset({*who, ("direction", "in")}))] == 10
    assert s[("edgemq_message_bytes_total", frozenset({*who, ("direction", "out")}))] == 400
    assert s[("edgemq_buffer_dropped_messages_total", frozenset({*who, ("reason", "ttl")}))] == 2
    assert s[("edgemq_buffer_oldest_age_seconds", frozenset(who))] == 10.0
    assert s[("edgemq_uplink_state", frozenset({*who, ("state", "backoff")}))] == 1
    assert s[("edgemq_uplink_state", frozenset({*who, ("state", "connected")}))] == 0
    assert s[("edgemq_uplink_up", frozenset(who))] == 0
    assert s[("edgemq_devices_connected", frozenset({*who, ("ownership", "foreign")}))] == 1
    assert s[("edgemq_buffer_forwarded_messages_total", frozenset(who))] == 7
    assert s[("edgemq_messages_by_qos_total", frozenset({*who, ("direction", "in"), ("qos", "1")}))] == 7
    assert s[("edgemq_messages_by_qos_total", frozenset({*who, ("direction", "out"), ("qos", "1")}))] == 3
    assert s[("edgemq_messages_dropped_out_total", frozenset(who))] == 5
    assert s[("edgemq_messages_dropped_in_total", frozenset(who))] == 4
    assert s[("edgemq_peer_messages_total", frozenset({*who, ("peer", "a2"), ("direction", "out")}))] == 6
    assert s[("edgemq_peer_message_bytes_total", frozenset({*who, ("peer", "a2"), ("direction", "in")}))] == 30
    assert s[("edgemq_peer_link_up", frozenset({*who, ("peer", "a3")}))] == 0
    assert s[("edgemq_wills_suppressed_total", frozenset(who))] == 2
    assert s[("edgemq_commands_routed_total", frozenset({*who, ("outcome", "not_mine")}))] == 7
    assert s[("edgemq_commands_queued", frozenset(who))] == 2
    assert s[("edgemq_commands_expired_total", frozenset(who))] == 1


def test_cloud_snapshot_has_no_link_or_buffer_and_nothing_is_invented() -> None:
    cloud = {k: EDGE[k] for k in ("component", "address", "started", "ts", "clients", "messages_in")}
    cloud["broker"] = "cloud"
    names = {n for n, _ in samples(cloud)}
    assert "edgemq_messages_total" in names
    assert not any(n.startswith(("edgemq_uplink", "edgemq_buffer", "edgemq_devices")) for n in names)
    assert (
        "edgemq_messages_total",
        frozenset({("site", ""), ("broker", "cloud"), ("direction", "out")}),
    ) not in samples(cloud)


def test_no_snapshot_yet_means_no_metrics() -> None:
    assert list(SnapshotCollector(lambda: None).collect()) == []


def test_port_derivation_and_override() -> None:
    assert metrics_port(18831, {}) == 19831
    assert metrics_port(18831, {"EDGEMQ_METRICS_PORT": "0"}) == 0
    assert metrics_port(18831, {"EDGEMQ_METRICS_PORT": "9100"}) == 9100
    assert metrics_port(18831, {"EDGEMQ_METRICS_PORT": "off"}) is None
    assert metrics_port(65000, {}) == 0


def test_every_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`((?:edgemq|process)_[a-z_]+)`", doc))
    snap = EDGE | {"dashboard": {"messages": 1, "devices": 2, "clients": 0}}
    text = generate_latest(registry_for(lambda: snap, process=True)).decode()
    emitted = {fam.name + ("_total" if fam.type == "counter" else "") for fam in text_string_to_metric_families(text)}
    missing = sorted(emitted - documented)
    assert not missing, f"metrics missing from docs/metrics.md: {missing}"


def test_the_cluster_file_port_is_used_unless_the_environment_overrides_it() -> None:
    assert metrics_port(18831, {}, configured=9200) == 9200
    assert metrics_port(18831, {}, configured=0) == 0
    assert metrics_port(18831, {}, configured=-1) is None
    assert metrics_port(18831, {"EDGEMQ_METRICS_PORT": "9100"}, configured=9200) == 9100
    assert metrics_port(18831, {"EDGEMQ_METRICS_PORT": "off"}, configured=9200) is None
