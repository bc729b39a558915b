"""devices.placement: the site's ring from the cluster file; owner and preference list per device."""

from __future__ import annotations

from collections import Counter

import pytest

from broker.config import BrokerConfig, SiteConfig
from broker.errors import RingError
from broker.ring import Ring
from devices.placement import choose_broker, device_key, preference, site_ring


def site(*ids: str, weights: dict[str, float] | None = None) -> SiteConfig:
    weights = weights or {}
    return SiteConfig(
        id="plant-1",
        brokers=[BrokerConfig(id=b, port=20000 + i, weight=weights.get(b, 1.0)) for i, b in enumerate(ids)],
    )


def test_key_is_site_slash_device() -> None:
    assert device_key("plant-1", "dev-0001") == "plant-1/dev-0001"


def test_pinned_values() -> None:
    # Golden values: a pinned hash gives these in every process and under any PYTHONHASHSEED.
    # If they change, every device in the field moves: change them deliberately or not at all.
    s = site("a1", "a2", "a3")
    got = {d: choose_broker(s, d).id for d in ("dev-0001", "dev-0002", "dev-0003", "pump-7")}
    assert got == GOLDEN


GOLDEN = {"dev-0001": "a3", "dev-0002": "a1", "dev-0003": "a1", "pump-7": "a1"}


def test_independent_of_listing_order() -> None:
    a = site("a1", "a2", "a3")
    b = site("a3", "a1", "a2")
    for i in range(500):
        d = f"dev-{i:04d}"
        assert choose_broker(a, d).id == choose_broker(b, d).id


def test_spreads_devices_roughly_evenly() -> None:
    s = site("a1", "a2", "a3")
    counts = Counter(choose_broker(s, f"dev-{i:04d}").id for i in range(3000))
    assert set(counts) == {"a1", "a2", "a3"}
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_zero_weight_brokers_own_nothing() -> None:
    s = site("a1", "a2", "a3", weights={"a2": 0.0})
    assert {choose_broker(s, f"dev-{i:04d}").id for i in range(300)} == {"a1", "a3"}


def test_a_site_without_weight_has_no_broker_to_choose() -> None:
    s = site("a1", weights={"a1": 0.0})
    with pytest.raises(RingError) as info:
        choose_broker(s, "dev-0001")
    assert info.value.fields["site"] == "plant-1"


def test_returns_the_broker_model_itself() -> None:
    s = site("a1", "a2")
    assert choose_broker(s, "dev-0001") in s.brokers


def test_site_ring_takes_ids_and_weights_from_the_config() -> None:
    s = site("a1", "a2", "a3", weights={"a2": 2.0, "a3": 0.0})
    assert site_ring(s) == Ring({"a1": 1.0, "a2": 2.0, "a3": 0.0})
    assert site_ring(s) is site_ring(site("a3", "a2", "a1", weights={"a2": 2.0, "a3": 0.0}))  # cached


def test_owner_is_the_rings_owner_of_site_slash_device() -> None:
    s = site("a1", "a2", "a3")
    ring = Ring.uniform(["a1", "a2", "a3"])
    for i in range(300):
        d = f"dev-{i:04d}"
        assert choose_broker(s, d).id == ring.owner(f"plant-1/{d}")


def test_preference_starts_at_the_owner_and_lists_distinct_live_brokers() -> None:
    s = site("a1", "a2", "a3", "a4", weights={"a4": 0.0})
    for i in range(200):
        d = f"dev-{i:04d}"
        full = [b.id for b in preference(s, d)]
        assert full[0] == choose_broker(s, d).id
        assert sorted(full) == ["a1", "a2", "a3"]
        assert [b.id for b in preference(s, d, 2)] == full[:2]
        assert all(b in s.brokers for b in preference(s, d))


def test_golden_preference_lists() -> None:
    s = site("a1", "a2", "a3")
    got = {d: [b.id for b in preference(s, d, 3)] for d in ("dev-0001", "dev-0002", "pump-7")}
    assert got == {"dev-0001": ["a3", "a1", "a2"], "dev-0002": ["a1", "a2", "a3"], "pump-7": ["a1", "a2", "a3"]}


def test_weights_shift_the_share() -> None:
    s = site("a1", "a2", weights={"a1": 3.0, "a2": 1.0})
    counts = Counter(choose_broker(s, f"dev-{i:04d}").id for i in range(4000))
    assert 2800 <= counts["a1"] <= 3200, counts
