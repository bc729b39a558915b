"""The dashboard's aggregator: health, rates, bounded history, sampled tail (no I/O, no clocks)."""

from __future__ import annotations

import json
from typing import Any

from edgemq.dashboard.aggregate import Aggregator


def stats(ts: float, messages_in: int, depth: int = 0, forwarded: int = 0, **kw: Any) -> bytes:
    return json.dumps(
        {
            "ts": ts,
            "messages_in": messages_in,
            "clients": 3,
            "uplink": {"state": "connected", "connects": 2, "forwarded": forwarded},
            "buffer": {"depth_messages": depth, "oldest_age_s": 1.5 if depth else None, "dropped": {"expired": 1}},
            "ownership": {"owned": 2, "foreign": 1, "unknown": 0},
            **kw,
        }
    ).encode()


def test_health_online_isolated_offline() -> None:
    agg = Aggregator([("plant-1", "a1")])
    row = agg.tick(0.0)["brokers"][0]
    assert (row["key"], row["health"], row["configured"]) == ("plant-1/a1", "offline", True)
    agg.on_state("plant-1", "a1", b'{"state": "online"}', 1.0)
    assert agg.tick(1.0)["brokers"][0]["health"] == "online"
    # The will says offline, but the broker itself answers with fresh stats: its uplink is down.
    agg.on_state("plant-1", "a1", b'{"state": "offline"}', 2.0)
    agg.on_source("edge:plant-1/a1", True, ["plant-1/a1"])
    agg.on_stats("plant-1", "a1", stats(2.0, 10, depth=5), 2.0)
    frame = agg.tick(3.0)
    assert frame["brokers"][0]["health"] == "isolated"
    assert frame["point"]["depth"]["plant-1/a1"] == 5
    # Its own connection gone too (or stats stale): offline, and no stale values shown.
    agg.on_source("edge:plant-1/a1", False, ["plant-1/a1"])
    frame = agg.tick(4.0)
    assert frame["brokers"][0]["health"] == "offline"
    assert frame["brokers"][0]["uplink"] is None and frame["point"]["depth"]["plant-1/a1"] is None
    agg.on_source("edge:plant-1/a1", True, ["plant-1/a1"])
    assert agg.tick(4.0 + 60)["brokers"][0]["health"] == "offline"  # stale stats


def test_rates_from_successive_snapshots_and_unknown_brokers_appear() -> None:
    agg = Aggregator()
    agg.on_state("plant-9", "z1", b'{"state": "online"}', 0.0)
    agg.on_stats("plant-9", "z1", stats(100.0, 0, forwarded=0), 0.0)
    agg.tick(0.0)
    agg.on_stats("plant-9", "z1", stats(102.0, 50, forwarded=40), 1.0)
    agg.on_stats("plant-9", "z1", stats(101.0, 999), 1.0)  # older than what we have: ignored
    row = agg.tick(1.0)["brokers"][0]
    assert (row["key"], row["rate_in"], row["drain_rate"]) == ("plant-9/z1", 25.0, 20.0)
    assert (row["owned"], row["foreign"], row["dropped"], row["reconnects"]) == (2, 1, 1, 1)


def test_telemetry_is_counted_and_the_tail_sampled() -> None:
    agg = Aggregator([("p", "a"), ("p", "b")], owner=lambda site, dev: "a" if dev < "m" else "b", tail_per_tick=3)
    agg.tick(0.0)
    for i in range(1000):
        agg.on_telemetry(f"telemetry/p/{'d' if i % 2 else 'x'}{i % 10}/t", b"%d" % i, 0.5)
    frame = agg.tick(1.0)
    assert frame["totals"]["telemetry"] == 1000 and frame["totals"]["devices"] == 10
    assert frame["totals"]["telemetry_rate"] == 1000.0
    assert len(frame["tail"]["new"]) == 3 and frame["tail"]["skipped"] == 997
    assert {r["key"]: r["ring_devices"] for r in frame["brokers"]} == {"p/a": 5, "p/b": 5}
    agg.set_tail_filter("telemetry/p/x1/#")
    agg.on_telemetry("telemetry/p/d1/t", b"no", 1.5)
    agg.on_telemetry("telemetry/p/x1/t", b"yes", 1.5)
    assert [m["payload"] for m in agg.tick(2.0)["tail"]["new"]] == ["yes"]


def test_history_is_bounded_and_aligned() -> None:
    agg = Aggregator([("p", "a")], history=10)
    for t in range(25):
        agg.tick(float(t))
        if t == 12:
            agg.on_state("p", "late", b'{"state": "online"}', float(t))
    h = agg.history()
    assert len(h["t"]) == 10 and h["t"][0] == 15.0
    assert all(len(series) == 10 for kind in ("rate", "depth", "age") for series in h[kind].values())
