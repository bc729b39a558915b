"""Unit tests of the ownership ring (broker/ring.py): errors, weights, preference shape, pinned owners."""

from __future__ import annotations

import hashlib
import math

import pytest

from broker.errors import RingError
from broker.ring import Ring, moves

THREE = ["edge-a1", "edge-a2", "edge-a3"]
TEN = [f"edge-{i:02d}" for i in range(1, 11)]


# -- errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("brokers", "needle"),
    [
        ([], "at least one broker"),
        ({}, "at least one broker"),
        ([("a", 0.0), ("b", 0)], "weight 0"),
        ([("a", -1.0)], ">= 0"),
        ([("a", math.nan)], "finite"),
        ([("a", math.inf)], "finite"),
        ([("a", 1.0), ("a", 2.0)], "listed twice"),
        ([("", 1.0)], "non-empty string"),
        ([(7, 1.0)], "non-empty string"),
        ([("a", "1")], "must be a number"),
        ([("a", True)], "must be a number"),
        (["abc"], "expected \\(broker id, weight\\)"),
        ([("a", 1.0, 2.0)], "expected \\(broker id, weight\\)"),
    ],
)
def test_bad_rings_raise_ring_error(brokers: object, needle: str) -> None:
    with pytest.raises(RingError, match=needle) as info:
        Ring(brokers)  # type: ignore[arg-type]
    assert info.value.hint  # every ring error tells the operator what to do


def test_error_carries_the_broker_and_value() -> None:
    with pytest.raises(RingError) as info:
        Ring({"edge-a1": 1.0, "edge-a2": -2.0})
    assert info.value.fields == {"broker": "edge-a2", "value": -2.0}
    assert not info.value.recoverable


@pytest.mark.parametrize("n", [0, -1, True, 1.5])
def test_preference_needs_n_at_least_one(n: object) -> None:
    with pytest.raises(RingError, match="n >= 1"):
        Ring.uniform(THREE).preference("k", n)  # type: ignore[arg-type]


def test_without_unknown_broker_raises() -> None:
    with pytest.raises(RingError, match="not in the ring"):
        Ring.uniform(THREE).without_broker("edge-zz")


def test_removing_the_last_live_broker_raises() -> None:
    with pytest.raises(RingError, match="at least one broker"):
        Ring.uniform(["only"]).without_broker("only")
    with pytest.raises(RingError, match="weight 0"):
        Ring({"a": 1.0, "b": 0.0}).without_broker("a")


# -- weights ----------------------------------------------------------------


def test_weight_zero_owns_nothing_and_is_never_preferred() -> None:
    ring = Ring({"edge-a1": 1.0, "edge-a2": 0.0, "edge-a3": 2.0})
    assert ring.brokers == ("edge-a1", "edge-a2", "edge-a3")
    assert ring.weights["edge-a2"] == 0.0
    assert ring.shares["edge-a2"] == 0.0
    for i in range(500):
        key = f"plant-1/dev-{i}"
        assert ring.owner(key) != "edge-a2"
        assert "edge-a2" not in ring.preference(key, 3)


def test_single_live_broker_owns_everything() -> None:
    ring = Ring({"a": 0.0, "b": 3.5, "c": 0.0})
    assert {ring.owner(f"k{i}") for i in range(200)} == {"b"}
    assert ring.preference("k", 5) == ["b"]


def test_weights_roughly_proportional() -> None:
    ring = Ring({"light": 1.0, "heavy": 3.0})
    heavy = sum(ring.owner(f"plant-1/dev-{i}") == "heavy" for i in range(4000))
    assert 0.70 < heavy / 4000 < 0.80


def test_common_scale_does_not_change_owners() -> None:
    # Doubling every weight is exact in binary floating point, so owners are identical.
    one = Ring.uniform(TEN, 1.0)
    five = Ring.uniform(TEN, 5.0)
    weighted = Ring({b: float(1 + i % 3) for i, b in enumerate(TEN)})
    doubled = Ring({b: 2.0 * (1 + i % 3) for i, b in enumerate(TEN)})
    for i in range(500):
        key = f"k{i}"
        assert one.owner(key) == five.owner(key)
        assert weighted.preference(key, 10) == doubled.preference(key, 10)


def test_shares() -> None:
    shares = Ring({"a": 1.0, "b": 2.0, "c": 1.0}).shares
    assert shares == {"a": 0.25, "b": 0.5, "c": 0.25}


# -- preference shape ---------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100])
def test_preference_shape(n: int) -> None:
    ring = Ring({"a": 1.0, "b": 2.0, "c": 1.0, "d": 0.0})
    for i in range(100):
        key = f"plant-1/dev-{i}"
        pref = ring.preference(key, n)
        assert len(pref) == min(n, 3)
        assert len(set(pref)) == len(pref)
        assert pref[0] == ring.owner(key)


def test_full_preference_is_a_permutation_of_live_brokers() -> None:
    ring = Ring.uniform(TEN)
    assert sorted(ring.preference("plant-1/dev-1", 99)) == TEN


# -- determinism --------------------------------------------------------------

PINNED_EQUAL = {
    "plant-1/dev-0001": ["edge-a1", "edge-a3", "edge-a2"],
    "plant-1/dev-0002": ["edge-a1", "edge-a3", "edge-a2"],
    "plant-1/dev-0003": ["edge-a1", "edge-a2", "edge-a3"],
    "plant-1/dev-0004": ["edge-a3", "edge-a2", "edge-a1"],
    "plant-2/pump-17": ["edge-a2", "edge-a3", "edge-a1"],
    "": ["edge-a2", "edge-a3", "edge-a1"],
    "ü/设备": ["edge-a1", "edge-a2", "edge-a3"],
}
PINNED_WEIGHTED = {
    "plant-1/dev-0001": ["edge-a1", "edge-a3", "edge-a2"],
    "plant-1/dev-0002": ["edge-a3", "edge-a1", "edge-a2"],
    "plant-1/dev-0003": ["edge-a2", "edge-a1", "edge-a3"],
    "plant-1/dev-0004": ["edge-a3", "edge-a2", "edge-a1"],
    "plant-2/pump-17": ["edge-a2", "edge-a3", "edge-a1"],
}


def test_pinned_owners_equal_weights() -> None:
    """A change of hash, seeds or mixing changes these: that is a breaking change for every site."""
    ring = Ring.uniform(THREE)
    for key, pref in PINNED_EQUAL.items():
        assert ring.preference(key, 3) == pref
        assert ring.owner(key) == pref[0]


def test_pinned_owners_weighted() -> None:
    ring = Ring({"edge-a1": 1.0, "edge-a2": 2.0, "edge-a3": 3.0, "edge-a4": 0.0})
    for key, pref in PINNED_WEIGHTED.items():
        assert ring.preference(key, 4) == pref
        assert ring.owner(key) == pref[0]


@pytest.mark.parametrize(
    ("weights", "digest"),
    [
        ([1.0] * 10, "13d3f8116381197d87fd4c0294368af97b77c649bfec08dceff0685eaeaa30da"),
        ([float(1 + i % 3) for i in range(1, 11)], "39a9bad8b5915bdd2e74159b2e4321ce6cf31e1d9359e57c8a9205ff6d16aa2f"),
    ],
)
def test_pinned_digest_of_1000_owners(weights: list[float], digest: str) -> None:
    ring = Ring(dict(zip(TEN, weights, strict=True)))
    owners = "\n".join(ring.owner(f"plant-1/dev-{i:04d}") for i in range(1000))
    assert hashlib.sha256(owners.encode()).hexdigest() == digest


def test_listing_order_does_not_matter() -> None:
    pairs = [(b, float(1 + i % 3)) for i, b in enumerate(TEN)]
    forward, backward = Ring(pairs), Ring(reversed(pairs))
    assert forward == backward
    assert hash(forward) == hash(backward)
    for i in range(300):
        assert forward.preference(f"k{i}", 10) == backward.preference(f"k{i}", 10)


# -- ties (white box: force equal draws) ------------------------------------------


def test_exact_ties_go_to_the_smaller_id_consistently(monkeypatch: pytest.MonkeyPatch) -> None:
    equal = Ring.uniform(["c", "a", "b"])
    monkeypatch.setattr(Ring, "_draws", lambda self, key: (1.5, 1.5, 1.25))  # layout a, b, c
    assert equal.owner("k") == "a"
    assert equal.preference("k", 3) == ["a", "b", "c"]


def test_exact_score_ties_between_weight_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    # Layout is by weight descending, then id: heavy (w=2) first, then a, z (w=1).
    ring = Ring({"z": 1.0, "a": 1.0, "heavy": 2.0})
    # ln(u)/2 == ln(v)/1 when u == v**2: 0.25 -> ln(.25)/2 == ln(.5).
    monkeypatch.setattr(Ring, "_draws", lambda self, key: (1.25, 1.5, 1.125))
    # Scores tie exactly; the larger draw (a: u = .5 > heavy: u = .25) wins.
    assert ring.owner("k") == "a"
    assert ring.preference("k", 3)[0] == "a"


# -- membership and values --------------------------------------------------------


def test_with_and_without_broker_return_new_rings() -> None:
    ring = Ring.uniform(THREE)
    bigger = ring.with_broker("edge-a4", 2.0)
    assert ring.brokers == tuple(THREE)
    assert bigger.weights["edge-a4"] == 2.0
    assert bigger.without_broker("edge-a4") == ring
    assert ring.with_broker("edge-a1", 5.0).weights["edge-a1"] == 5.0


def test_ring_is_immutable() -> None:
    ring = Ring.uniform(THREE)
    with pytest.raises(AttributeError):
        ring.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        ring.weights["edge-a1"] = 3.0  # type: ignore[index]


def test_repr_len_contains() -> None:
    ring = Ring({"b": 2.0, "a": 1.0})
    assert repr(ring) == "Ring({'a': 1, 'b': 2})"
    assert len(ring) == 2
    assert "a" in ring and "zz" not in ring


def test_moves_reports_only_keys_that_change_owner() -> None:
    old = Ring.uniform(THREE)
    new = old.with_broker("edge-a4")
    keys = [f"plant-1/dev-{i}" for i in range(2000)]
    changed = moves(old, new, keys)
    assert changed  # about a quarter of the keys
    for key, (before, after) in changed.items():
        assert before == old.owner(key) and after == new.owner(key) == "edge-a4"
    assert all(old.owner(k) == new.owner(k) for k in keys if k not in changed)
    assert moves(old, old, keys) == {}
