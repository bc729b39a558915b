"""Topic rules: validation, filter matching, ownership keys and bridge topic mapping.

How it works: plain string functions over MQTT 3.1.1 topic names and filters.
``matches`` implements the spec's '+' and '#' rules (including that wildcards
do not match topics starting with '$'). ``device_key`` extracts the ownership
key ``{site}/{device}`` from the conventional topics (telemetry/, commands/,
status/). ``TopicMap`` decides whether a topic takes a bridge rule and maps it.

What it does not do: no I/O, no subscriptions, no access control decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEVICE_TOPIC_KINDS",
    "TopicError",
    "TopicMap",
    "device_key",
    "matches",
    "validate_filter",
    "validate_topic_name",
]

MAX_TOPIC_BYTES = 65535
DEVICE_TOPIC_KINDS = ("telemetry", "commands", "status")


class TopicError(ValueError):
    """A topic name or filter breaks the MQTT rules (a ValueError, so pydantic reports it)."""


def _check_common(topic: str) -> None:
    if not topic:
        raise TopicError("topic must not be empty")
    if "\x00" in topic:
        raise TopicError("topic must not contain NUL")
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise TopicError("topic longer than 65535 bytes")
    try:
        topic.encode("utf-8")
    except UnicodeEncodeError:
        raise TopicError("topic is not valid UTF-8") from None


def validate_topic_name(topic: str) -> str:
    """A topic a client may PUBLISH to: no wildcards. Returns it, or raises TopicError."""
    _check_common(topic)
    if "+" in topic or "#" in topic:
        raise TopicError(f"wildcards are not allowed in a topic name: {topic!r}")
    return topic


def validate_filter(topic_filter: str) -> str:
    """A SUBSCRIBE filter: '+' whole levels, '#' only last. Returns it, or raises TopicError."""
    _check_common(topic_filter)
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError(f"'#' must be a whole, last level: {topic_filter!r}")
        if "+" in level and level != "+":
            raise TopicError(f"'+' must be a whole level: {topic_filter!r}")
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` under MQTT 3.1.1 rules."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if topic_filter == "#":
        return True
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def device_key(topic: str) -> str | None:
    """The ownership key ``{site}/{device}`` of a device topic, or None for other topics.

    ``telemetry/plant-1/pump-7/temp`` → ``plant-1/pump-7``.
    """
    parts = topic.split("/", 3)
    if len(parts) >= 3 and parts[0] in DEVICE_TOPIC_KINDS and parts[1] and parts[2]:
        return f"{parts[1]}/{parts[2]}"
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    """A resolved bridge rule ('{site}' already substituted)."""

    pattern: str
    qos: int
    remote_prefix: str
    overflow: str


class TopicMap:
    """Which topics a bridge direction takes, and how names map across the link."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def build(cls, rules: Sequence[object], site: str) -> TopicMap:
        """From config TopicRule models (duck-typed to keep this module import-free)."""
        return cls(
            [
                Rule(
                    pattern=r.pattern.replace("{site}", site),  # type: ignore[attr-defined]
                    qos=r.qos,  # type: ignore[attr-defined]
                    remote_prefix=r.remote_prefix,  # type: ignore[attr-defined]
                    overflow=r.overflow,  # type: ignore[attr-defined]
                )
                for r in rules
            ]
        )

    def rule_for_local(self, topic: str) -> Rule | None:
        """The first uplink rule a local topic takes, or None."""
        for r in self.rules:
            if matches(r.pattern, topic):
                return r
        return None

    def to_remote(self, rule: Rule, topic: str) -> str:
        """Local topic name → remote topic name."""
        return rule.remote_prefix + topic

    def remote_filters(self) -> list[tuple[str, int]]:
        """Filters to subscribe to at the remote side (downlink)."""
        return [(r.remote_prefix + r.pattern, r.qos) for r in self.rules]

    def to_local(self, topic: str) -> tuple[Rule, str] | None:
        """Remote topic name → (rule, local topic name), or None if no rule takes it."""
        for r in self.rules:
            if matches(r.remote_prefix + r.pattern, topic):
                return r, topic[len(r.remote_prefix) :]
        return None
