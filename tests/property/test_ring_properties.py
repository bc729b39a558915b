"""Hypothesis properties of the ownership ring: monotonicity, preference shape, failover, stability.

The cross-process stability check runs owners in fresh interpreters under other
PYTHONHASHSEED values; a test of the test shows the same check catches a ring
built on Python's salted ``hash()``.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.ring import Ring

REPO = Path(__file__).resolve().parents[2]

ids = st.text(alphabet="abcdefgh-0123456789", min_size=1, max_size=8)
weights = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]), st.floats(0.01, 100.0))
keys = st.lists(st.text(max_size=24), min_size=1, max_size=40, unique=True)


@st.composite
def rings(draw: st.DrawFn, min_live: int = 1) -> Ring:
    """A ring of 1..12 brokers with mixed weights (some zero), at least `min_live` positive."""
    members = draw(st.dictionaries(ids, weights, min_size=min_live, max_size=12))
    live = [b for b, w in members.items() if w > 0]
    dead = sorted(b for b, w in members.items() if w <= 0)
    for b in dead[: max(0, min_live - len(live))]:
        members[b] = 1.0
    return Ring(members)


def new_id(ring: Ring) -> st.SearchStrategy[str]:
    return ids.filter(lambda b: b not in ring)


def live(ring: Ring) -> list[str]:
    return [b for b, w in ring.weights.items() if w > 0]


# -- monotonicity -----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(rings(), keys, st.data())
def test_adding_a_broker_only_moves_keys_to_it(ring: Ring, sample: list[str], data: st.DataObject) -> None:
    added = data.draw(new_id(ring))
    bigger = ring.with_broker(added, data.draw(weights))
    for key in sample:
        before, after = ring.owner(key), bigger.owner(key)
        assert after in (before, added)


@settings(max_examples=150, deadline=None)
@given(rings(min_live=2), keys, st.data())
def test_removing_a_broker_only_moves_its_keys(ring: Ring, sample: list[str], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(live(ring)))
    smaller = ring.without_broker(gone)
    for key in sample:
        before = ring.owner(key)
        if before != gone:
            assert smaller.owner(key) == before


@settings(max_examples=150, deadline=None)
@given(rings(min_live=2), keys, st.data())
def test_reweighting_moves_keys_only_to_or_from_that_broker(ring: Ring, sample: list[str], data: st.DataObject) -> None:
    changed = data.draw(st.sampled_from(ring.brokers))
    weight = data.draw(weights)
    if weight == 0 and live(ring) == [changed]:
        weight = 1.0
    other = ring.with_broker(changed, weight)
    grew = weight >= ring.weights[changed]
    for key in sample:
        before, after = ring.owner(key), other.owner(key)
        if before != after:
            assert changed in (before, after)
            # Growing only attracts keys, shrinking only sheds them.
            assert (after == changed) if grew else (before == changed)


# -- preference lists and failover ----------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(rings(), keys, st.integers(1, 15))
def test_preference_shape(ring: Ring, sample: list[str], n: int) -> None:
    positive = live(ring)
    for key in sample:
        pref = ring.preference(key, n)
        assert len(pref) == min(n, len(positive))
        assert len(set(pref)) == len(pref)
        assert set(pref) <= set(positive)
        assert pref[0] == ring.owner(key)


@settings(max_examples=150, deadline=None)
@given(rings(min_live=2), keys)
def test_failover_promotes_the_second_preference(ring: Ring, sample: list[str]) -> None:
    for key in sample:
        owner, second = ring.preference(key, 2)
        assert ring.without_broker(owner).owner(key) == second


@settings(max_examples=150, deadline=None)
@given(rings(min_live=2), keys, st.data())
def test_removing_any_broker_leaves_preference_lists_otherwise_unchanged(
    ring: Ring, sample: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(ring.brokers))
    if live(ring) == [gone]:
        return
    smaller = ring.without_broker(gone)
    for key in sample:
        full = ring.preference(key, len(ring))
        assert smaller.preference(key, len(ring)) == [b for b in full if b != gone]


@settings(max_examples=100, deadline=None)
@given(rings(), keys, st.randoms(use_true_random=False))
def test_listing_order_does_not_matter(ring: Ring, sample: list[str], rnd: random.Random) -> None:
    pairs = list(ring.weights.items())
    rnd.shuffle(pairs)
    shuffled = Ring(pairs)
    for key in sample:
        assert shuffled.preference(key, len(ring)) == ring.preference(key, len(ring))


# -- cross-process stability --------------------------------------------------------

CHILD = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
module, _, name = sys.argv[2].partition(":")
factory = getattr(importlib.import_module(module), name)
cases = json.loads(sys.stdin.read())
print(json.dumps([[factory(pairs).owner(k) for k in ks] for pairs, ks in cases]))
"""


def stability_cases(seed: int = 3, count: int = 25) -> list[tuple[list[tuple[str, float]], list[str]]]:
    """Fixed pseudo-random rings (shuffled listing, some weight 0) with keys, in JSON-able form."""
    rnd = random.Random(seed)
    cases = []
    for _ in range(count):
        members = {
            f"edge-{rnd.randrange(1000)}": rnd.choice([0.0, 1.0, 1.0, 2.0, rnd.uniform(0.1, 5)]) for _ in range(8)
        }
        if not any(members.values()):
            members[next(iter(members))] = 1.0
        pairs = list(members.items())
        rnd.shuffle(pairs)
        ks = [f"plant-{rnd.randrange(4)}/dev-{rnd.getrandbits(40):x}" for _ in range(80)]
        cases.append((pairs, ks))
    return cases


def owners_in_fresh_interpreter(target: str, hashseed: str, cases: object) -> list[list[str]]:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), target],
        input=json.dumps(cases),
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: list[list[str]] = json.loads(done.stdout)
    return result


def stable_across_processes(target: str, seeds: tuple[str, str] = ("1", "2")) -> bool:
    """Do this process and two fresh interpreters under other PYTHONHASHSEED values agree on every owner?

    The children get each ring's brokers in a shuffled order, this process in reverse order.
    """
    module, _, name = target.partition(":")
    factory = getattr(importlib.import_module(module), name)
    cases = stability_cases()
    here = [[factory(list(reversed(pairs))).owner(k) for k in ks] for pairs, ks in cases]
    return all(owners_in_fresh_interpreter(target, seed, cases) == here for seed in seeds)


class SaltedRing(Ring):
    """Deliberately broken: rendezvous on Python's salted ``hash()``. Never do this."""

    __slots__ = ()

    def owner(self, key: str) -> str:
        return max(live(self), key=lambda b: hash((key, b)))


def test_owners_are_identical_across_processes_and_hash_seeds() -> None:
    assert stable_across_processes("broker.ring:Ring")


def test_the_stability_check_catches_a_ring_built_on_salted_hash() -> None:
    """Test of the test: the same check must fail for a ring that uses ``hash()``."""
    assert not stable_across_processes(f"{__name__}:SaltedRing")
