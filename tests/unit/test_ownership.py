"""broker.ownership: owned vs foreign devices, and the warn/refuse admission policy."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest

from broker.config import BrokerConfig, SiteConfig
from broker.ownership import (
    Route,
    Verdict,
    admit,
    alive_from_states,
    count,
    device_from_client_id,
    ring_document,
    ring_topic,
    route_command,
)
from broker.ring import Ring

RING = Ring.uniform(["a1", "a2", "a3"])
SITE = "plant-1"


def owned_by(broker: str, n: int) -> list[str]:
    out = []
    i = 0
    while len(out) < n:
        d = f"dev-{i:04d}"
        if RING.owner(f"{SITE}/{d}") == broker:
            out.append(d)
        i += 1
    return out


def test_device_from_client_id() -> None:
    assert device_from_client_id(SITE, "dev-plant-1-dev-0001") == "dev-0001"
    assert device_from_client_id(SITE, "dev-plant-1-pump-7") == "pump-7"
    assert device_from_client_id(SITE, "dev-plant-1-") is None
    assert device_from_client_id(SITE, "dev-plant-2-dev-0001") is None
    assert device_from_client_id(SITE, "edgemq-bridge-plant-1-a1") is None
    assert device_from_client_id(SITE, "probe-dev-plant-1-dev-0001") is None


def test_count_splits_owned_foreign_unknown() -> None:
    mine = owned_by("a1", 5)
    theirs2 = owned_by("a2", 3)
    theirs3 = owned_by("a3", 2)
    cids = [f"dev-{SITE}-{d}" for d in mine + theirs2 + theirs3] + ["collector-x", "edgemq-bridge-plant-1-a1"]
    c = count(RING, SITE, "a1", cids)
    assert (c.owned, c.foreign, c.unknown) == (5, 5, 2)
    assert c.foreign_by_owner == {"a2": 3, "a3": 2}
    assert count(RING, SITE, "a1", []).owned == 0


@pytest.mark.parametrize("policy", ["warn", "refuse"])
def test_owned_devices_and_non_devices_are_always_admitted(policy: str) -> None:
    d = owned_by("a1", 1)[0]
    dec = admit(RING, f"{SITE}/{d}", "a1", [], policy)  # type: ignore[arg-type]
    assert dec.admit and dec.verdict is Verdict.OWNED and dec.owner == "a1" and not dec.warn
    dec = admit(RING, None, "a1", ["a2"], policy)  # type: ignore[arg-type]
    assert dec.admit and dec.verdict is Verdict.NOT_A_DEVICE and dec.owner is None


@pytest.mark.parametrize("policy", ["warn", "refuse"])
def test_a_device_whose_owner_is_down_is_admitted(policy: str) -> None:
    d = owned_by("a2", 1)[0]
    dec = admit(RING, f"{SITE}/{d}", "a1", ["a1", "a3"], policy)  # type: ignore[arg-type]
    assert dec.admit and dec.verdict is Verdict.OWNER_DOWN and dec.owner == "a2" and not dec.warn


def test_warn_admits_a_device_whose_owner_is_alive_and_says_so() -> None:
    d = owned_by("a2", 1)[0]
    dec = admit(RING, f"{SITE}/{d}", "a1", ["a2"], "warn")
    assert dec.admit and dec.verdict is Verdict.FOREIGN and dec.warn and "a2" in dec.reason


def test_refuse_rejects_only_when_the_owner_is_alive_and_not_us() -> None:
    d = owned_by("a2", 1)[0]
    dec = admit(RING, f"{SITE}/{d}", "a1", ["a1", "a2", "a3"], "refuse")
    assert not dec.admit and dec.verdict is Verdict.REFUSED and dec.owner == "a2" and dec.warn


def test_default_policy_is_warn() -> None:
    d = owned_by("a3", 1)[0]
    assert admit(RING, f"{SITE}/{d}", "a1", ["a3"]).admit


def test_alive_from_retained_state_payloads() -> None:
    states: dict[str, bytes | str] = {
        "a1": json.dumps({"site": SITE, "broker": "a1", "state": "online", "since": 1.0}),
        "a2": json.dumps({"site": SITE, "broker": "a2", "state": "offline"}).encode(),
        "a3": b"not json",
        "a4": b"[1, 2]",
        "a5": b'{"state": "online"}',
    }
    assert alive_from_states(states) == {"a1", "a5"}


# -- downlink routing ------------------------------------------------------------------------


def test_the_broker_a_device_is_on_delivers_and_nobody_else_acts() -> None:
    d = owned_by("a1", 1)[0]
    key = f"{SITE}/{d}"
    alive = ["a1", "a2", "a3"]
    routes = {b: route_command(RING, key, b, "a2", alive) for b in alive}
    assert routes == {"a1": Route.DROP, "a2": Route.DELIVER, "a3": Route.DROP}


def test_an_offline_device_has_its_commands_queued_by_its_owner_only() -> None:
    d = owned_by("a1", 1)[0]
    key = f"{SITE}/{d}"
    alive = ["a1", "a2", "a3"]
    routes = {b: route_command(RING, key, b, None, alive) for b in alive}
    assert routes == {"a1": Route.QUEUE, "a2": Route.DROP, "a3": Route.DROP}


def test_when_the_owner_is_down_the_next_alive_preference_queues() -> None:
    d = owned_by("a1", 1)[0]
    key = f"{SITE}/{d}"
    second = RING.preference(key, 3)[1]
    alive = ["a2", "a3"]
    # The device was on a1 (dead) or is offline: either way one survivor keeps the command.
    for present in (None, "a1"):
        routes = {b: route_command(RING, key, b, present, alive) for b in alive}
        assert [b for b, r in routes.items() if r is Route.QUEUE] == [second]
        assert all(r is not Route.DELIVER for r in routes.values())


# -- the ring document: a from-the-spec implementation computes the same owners -----------------


def _spec_owner(doc: dict[str, Any], key: str) -> list[str]:
    """What firmware would do: follow ring_document's hash spec literally, one broker at a time."""
    m64 = (1 << 64) - 1
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=b"edgemq.key.v1").digest(), "little")
    scored = []
    for b in doc["brokers"]:
        if b["weight"] <= 0:
            continue
        seed = hashlib.blake2b(b["id"].encode(), digest_size=16, person=b"edgemq.seed.v1").digest()
        s1, s2 = int.from_bytes(seed[:8], "little"), int.from_bytes(seed[8:], "little")
        p = (h ^ s1) * 0x9E3779B97F4A7C15
        v = (p & m64) ^ (p >> 64)
        p = (v ^ s2) * 0xBF58476D1CE4E5B9
        v = (p & m64) ^ (p >> 64)
        u = ((v >> 12) | 1) / 2**52
        scored.append((-math.log(u) / b["weight"], -u, b["id"]))
    return [b for _, _, b in sorted(scored)]


@pytest.mark.parametrize("weights", [{"a1": 1.0, "a2": 1.0, "a3": 1.0}, {"a1": 1.0, "a2": 2.5, "a3": 0.0, "b9": 3.0}])
def test_ring_document_spec_reproduces_the_ring(weights: dict[str, float]) -> None:
    site = SiteConfig(
        id=SITE, brokers=[BrokerConfig(id=b, port=22000 + i, weight=w) for i, (b, w) in enumerate(weights.items())]
    )
    doc = ring_document(site)
    doc = json.loads(json.dumps(doc))  # what a device receives
    assert ring_topic(SITE) == "edgemq/plant-1/ring"
    assert doc["site"] == SITE and doc["key"] == "{site}/{device}"
    assert [b["id"] for b in doc["brokers"]] == sorted(weights)
    ring = Ring(weights)
    for i in range(500):
        key = f"{SITE}/dev-{i:04d}"
        spec = _spec_owner(doc, key)
        assert spec[0] == ring.owner(key)
        assert spec == ring.preference(key, len(ring))
