"""devices.flow: sliding-window rates, last value and last seen, driven by an explicit clock."""

from __future__ import annotations

import pytest

from devices.flow import FlowTable, describe_payload
from devices.payload import Telemetry


def telemetry(device: str, seq: int, temp: float = 21.5, site: str = "plant-1") -> bytes:
    return Telemetry(device=device, site=site, seq=seq, ts=0.0, readings={"temp": temp}).encode()


def test_describe_our_json_shows_readings_and_seq() -> None:
    assert describe_payload(telemetry("d", 7, 21.5)) == "temp=21.5 #7"


def test_describe_other_payloads_as_raw_text_truncated() -> None:
    assert describe_payload(b"21.5") == "21.5"
    assert describe_payload(b"a\nb") == "a b"
    assert describe_payload(b"\xff") == "\ufffd"
    long = describe_payload(b"x" * 100, limit=10)
    assert long == "x" * 9 + "…"
    assert len(long) == 10


def test_a_device_topic_is_filed_under_site_and_device() -> None:
    t = FlowTable()
    view = t.observe("telemetry/plant-1/dev-0001/reading", telemetry("dev-0001", 1), now=100.0)
    assert (view.key, view.site, view.device, view.count) == ("plant-1/dev-0001", "plant-1", "dev-0001", 1)
    assert view.last_value == "temp=21.5 #1"
    assert view.last_seen == 100.0
    assert view.last_topic == "telemetry/plant-1/dev-0001/reading"


def test_status_and_telemetry_of_one_device_share_a_row() -> None:
    t = FlowTable()
    t.observe("telemetry/plant-1/d1/reading", telemetry("d1", 1), now=1.0)
    t.observe("status/plant-1/d1", b"online", now=2.0)
    snap = t.snapshot(now=2.0)
    assert len(snap.sources) == 1
    assert snap.sources[0].last_value == "online"
    assert snap.sources[0].count == 2


def test_other_topics_are_their_own_source_without_a_site() -> None:
    t = FlowTable()
    view = t.observe("edgemq/plant-1/a1/state", b'{"up": true}', now=1.0)
    assert (view.key, view.site) == ("edgemq/plant-1/a1/state", "-")


def test_steady_rate_is_measured_over_the_window() -> None:
    t = FlowTable(window_s=10.0)
    # 5 messages/s for 30 s
    for i in range(150):
        t.observe("telemetry/s/d/x", b"1", now=i * 0.2)
    snap = t.snapshot(now=29.9)
    assert snap.sources[0].rate == pytest.approx(5.0, rel=0.05)
    assert snap.sites[0].rate == pytest.approx(5.0, rel=0.05)
    assert snap.total_count == 150


def test_young_table_divides_by_its_age_not_the_whole_window() -> None:
    t = FlowTable(window_s=10.0)
    for i in range(20):
        t.observe("telemetry/s/d/x", b"1", now=100.0 + i * 0.1)  # 10/s for 2 s
    assert t.snapshot(now=102.0).sources[0].rate == pytest.approx(10.0)


def test_one_early_message_is_not_a_burst() -> None:
    t = FlowTable(window_s=10.0)
    t.observe("telemetry/s/d/x", b"1", now=50.0)
    assert t.snapshot(now=50.0).sources[0].rate == 1.0


def test_rate_decays_to_zero_when_a_source_goes_quiet_but_last_value_stays() -> None:
    t = FlowTable(window_s=5.0)
    for i in range(10):
        t.observe("telemetry/s/d/x", telemetry("d", i), now=float(i))
    snap = t.snapshot(now=100.0)
    src = snap.sources[0]
    assert src.rate == 0.0
    assert src.count == 10
    assert src.last_seen == 9.0
    assert src.last_value == "temp=21.5 #9"
    assert snap.total_rate == 0.0


def test_sites_add_up_their_devices_and_sort_by_last_seen() -> None:
    t = FlowTable(window_s=10.0)
    for i in range(10):
        now = float(i)
        t.observe("telemetry/p1/d1/x", b"1", now=now)
        t.observe("telemetry/p1/d2/x", b"1", now=now)
        t.observe("telemetry/p2/d1/x", b"1", now=now + 0.5)
    snap = t.snapshot(now=9.9)
    sites = {s.site: s for s in snap.sites}
    assert sites["p1"].sources == 2
    assert sites["p1"].count == 20
    assert sites["p1"].rate == pytest.approx(2 * sites["p2"].rate)
    assert [s.site for s in snap.sites] == ["p2", "p1"]
    assert snap.sources[0].key == "p2/d1"
    assert snap.total_rate == pytest.approx(sum(s.rate for s in snap.sites))


def test_sources_are_bounded_least_recently_seen_evicted() -> None:
    t = FlowTable(max_sources=3)
    for i in range(5):
        t.observe(f"telemetry/s/d{i}/x", b"1", now=float(i))
    t.observe("telemetry/s/d2/x", b"1", now=10.0)  # refresh d2
    t.observe("telemetry/s/d9/x", b"1", now=11.0)
    keys = {s.key for s in t.snapshot(now=11.0).sources}
    assert keys == {"s/d2", "s/d4", "s/d9"}


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FlowTable(window_s=0)


def test_empty_table() -> None:
    snap = FlowTable().snapshot(now=5.0)
    assert snap.sources == () and snap.sites == () and snap.total_rate == 0.0
