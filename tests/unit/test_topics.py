"""Topic validation, matching, ownership keys and bridge mapping."""

from __future__ import annotations

import pytest

from broker.config import TopicRule
from broker.topics import TopicError, TopicMap, device_key, matches, validate_filter, validate_topic_name


@pytest.mark.parametrize(
    ("flt", "topic", "expected"),
    [
        ("telemetry/#", "telemetry/plant-1/pump-7/temp", True),
        ("telemetry/#", "telemetry", True),
        ("telemetry/+/+/temp", "telemetry/plant-1/pump-7/temp", True),
        ("telemetry/+/+/temp", "telemetry/plant-1/pump-7/rpm", False),
        ("telemetry/+", "telemetry/plant-1/pump-7", False),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/+/c", "a//c", True),
        ("commands/plant-1/#", "commands/plant-2/x/y", False),
    ],
)
def test_matches(flt: str, topic: str, expected: bool) -> None:
    assert matches(flt, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "x\x00y"])
def test_invalid_filters(bad: str) -> None:
    with pytest.raises(TopicError):
        validate_filter(bad)


@pytest.mark.parametrize("bad", ["", "a/+", "a/#", "nul\x00", "\ud800"])
def test_invalid_topic_names(bad: str) -> None:
    with pytest.raises(TopicError):
        validate_topic_name(bad)


def test_device_key() -> None:
    assert device_key("telemetry/plant-1/pump-7/temp") == "plant-1/pump-7"
    assert device_key("commands/plant-1/pump-7/reboot") == "plant-1/pump-7"
    assert device_key("status/plant-1/pump-7") == "plant-1/pump-7"
    assert device_key("telemetry/plant-1") is None
    assert device_key("other/plant-1/pump-7") is None
    assert device_key("telemetry//pump") is None


def test_topic_map_uplink_and_downlink() -> None:
    up = TopicMap.build([TopicRule(pattern="telemetry/#", remote_prefix="sites/")], "plant-1")
    rule = up.rule_for_local("telemetry/plant-1/d/t")
    assert rule is not None
    assert up.to_remote(rule, "telemetry/plant-1/d/t") == "sites/telemetry/plant-1/d/t"
    assert up.rule_for_local("commands/plant-1/d/x") is None

    down = TopicMap.build([TopicRule(pattern="commands/{site}/#")], "plant-1")
    assert down.remote_filters() == [("commands/plant-1/#", 1)]
    mapped = down.to_local("commands/plant-1/pump-7/reboot")
    assert mapped is not None and mapped[1] == "commands/plant-1/pump-7/reboot"
    assert down.to_local("commands/plant-2/pump-7/reboot") is None
