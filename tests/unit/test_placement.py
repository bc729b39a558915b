"""devices.placement: a stable, order-independent choice among a site's brokers."""

from __future__ import annotations

from collections import Counter

import pytest

from broker.config import BrokerConfig, SiteConfig
from broker.errors import RingError
from devices.placement import choose_broker, device_key


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


GOLDEN = {"dev-0001": "a3", "dev-0002": "a3", "dev-0003": "a2", "pump-7": "a3"}


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
