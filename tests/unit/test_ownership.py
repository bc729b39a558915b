"""broker.ownership: owned vs foreign devices, and the warn/refuse admission policy."""

from __future__ import annotations

import json

import pytest

from broker.ownership import Verdict, admit, alive_from_states, count, device_from_client_id
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
