"""devices.fleet's pure helpers: naming, send pacing and reconnect back-off."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from broker.config import BrokerConfig, SiteConfig
from devices.fleet import (
    FleetConfig,
    backoff_delay,
    client_id,
    command_filter,
    device_ids,
    next_due,
    status_topic,
    telemetry_topic,
)


def test_names_and_topics() -> None:
    assert device_ids(1, 3) == ["dev-0001", "dev-0002", "dev-0003"]
    assert device_ids(12345, 1) == ["dev-12345"]
    assert client_id("plant-1", "dev-0001") == "dev-plant-1-dev-0001"
    assert telemetry_topic("plant-1", "dev-0001") == "telemetry/plant-1/dev-0001/reading"
    assert status_topic("plant-1", "dev-0001") == "status/plant-1/dev-0001"
    assert command_filter("plant-1", "dev-0001") == "commands/plant-1/dev-0001/#"


def test_next_due_keeps_an_even_schedule() -> None:
    due = 0.3
    for _ in range(10):
        due = next_due(due, 0.5, now=due + 0.01)
    assert due == pytest.approx(5.3)


def test_next_due_does_not_burst_after_a_stall() -> None:
    assert next_due(1.0, 0.5, now=10.0) == 10.0


@pytest.mark.parametrize("attempt", range(12))
def test_backoff_is_jittered_inside_its_capped_bounds(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(15.0, 0.5 * 2**attempt)
    for _ in range(200):
        d = backoff_delay(attempt, rng, 0.5, 15.0)
        assert ceiling / 2 <= d <= ceiling


def test_backoff_is_reproducible_from_the_seed_and_survives_huge_attempts() -> None:
    a = [backoff_delay(i, random.Random(7), 0.5, 15.0) for i in range(5)]
    b = [backoff_delay(i, random.Random(7), 0.5, 15.0) for i in range(5)]
    assert a == b
    assert 7.5 <= backoff_delay(10_000, random.Random(1), 0.5, 15.0) <= 15.0


def test_config_validates() -> None:
    site = SiteConfig(id="s", brokers=[BrokerConfig(id="a1", port=1883)])
    FleetConfig(site=site, devices=1)
    with pytest.raises(ValidationError):
        FleetConfig(site=site, devices=0)
    with pytest.raises(ValidationError):
        FleetConfig(site=site, devices=1, rate=0)
    with pytest.raises(ValidationError):
        FleetConfig(site=site, devices=1, reconnect_min_s=5, reconnect_max_s=1)
    with pytest.raises(ValidationError):
        FleetConfig(site=site, devices=1, surprise=1)  # type: ignore[call-arg]
