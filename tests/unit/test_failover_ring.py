"""devices.failover.set_preference and devices.placement.site_from_ring_document: following a ring change.

Pure: no sockets, no clocks. A broker joins: a device whose owner changed moves only after its
random delay (within move_window_s) plus a full hold-down of healthy probes; a device whose
owner did not change never moves.
"""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.config import BrokerConfig, SiteConfig
from broker.ownership import ring_document
from broker.ring import Ring
from devices.failover import FailoverPolicy, FailoverSettings, State
from devices.placement import preference, site_from_ring_document

FAST = FailoverSettings(probe_interval_s=1.0, probe_jitter=0.2, hold_down_s=5.0, move_window_s=10.0)


def at_home(pref: tuple[str, ...], seed: int = 1) -> FailoverPolicy:
    p = FailoverPolicy(pref, FAST, random.Random(seed), now=0.0)
    p.connected(pref[0], 0.1)
    assert p.status.state is State.HOME
    return p


def run_probes(p: FailoverPolicy, until: float, ok: bool = True) -> float | None:
    """Answer every probe the policy asks for up to ``until``; the time it said go home, else None."""
    while (at := p.next_probe_at) is not None and at <= until:
        if p.probe_result(ok, at):
            return at
    return None


def test_same_owner_nothing_moves() -> None:
    p = at_home(("a1", "a2", "a3"))
    assert not p.set_preference(("a1", "a4", "a2", "a3"), 10.0)
    assert p.status.state is State.HOME and p.status.broker == "a1"
    assert p.next_probe_at is None
    assert p.preference == ("a1", "a4", "a2", "a3")  # successors do follow the new ring


def test_new_owner_moves_only_after_its_delay_and_a_full_hold_down() -> None:
    p = at_home(("a1", "a2", "a3"))
    assert p.set_preference(("a4", "a1", "a2", "a3"), 10.0)
    assert p.owner == "a4"
    assert p.status.state is State.FAILOVER and p.status.broker == "a1"  # it stays put for now
    first = p.next_probe_at
    assert first is not None and 10.0 <= first <= 10.0 + FAST.move_window_s
    gone = run_probes(p, 100.0)
    assert gone is not None and gone >= first + FAST.hold_down_s
    assert p.status.state is State.RETURNING
    a = p.next_attempt(gone)
    assert (a.broker, a.index) == ("a4", 0)
    assert p.connected("a4", gone + 0.1).state is State.HOME


def test_a_new_owner_that_does_not_answer_is_never_joined() -> None:
    p = at_home(("a1", "a2", "a3"))
    p.set_preference(("a4", "a1", "a2", "a3"), 0.0)
    assert run_probes(p, 200.0, ok=False) is None
    assert p.status.state is State.FAILOVER and p.status.broker == "a1"


def test_delays_spread_over_the_window_and_are_seeded() -> None:
    firsts = []
    for seed in range(200):
        p = at_home(("a1", "a2"), seed)
        p.set_preference(("a4", "a1", "a2"), 0.0)
        assert p.next_probe_at is not None
        firsts.append(p.next_probe_at)
    assert min(firsts) < 0.2 * FAST.move_window_s and max(firsts) > 0.8 * FAST.move_window_s
    again = at_home(("a1", "a2"), 7)
    again.set_preference(("a4", "a1", "a2"), 0.0)
    assert again.next_probe_at == firsts[7]


def test_away_device_whose_new_owner_is_where_it_is_becomes_home() -> None:
    p = FailoverPolicy(("a1", "a2", "a3"), FAST, random.Random(1), now=0.0)
    p.connect_failed("a1", 0.0)
    assert p.connected("a2", 0.1).state is State.FAILOVER
    assert p.set_preference(("a2", "a3"), 1.0)  # a1 removed from the ring
    assert p.status.state is State.HOME and p.next_probe_at is None


def test_connecting_device_walks_from_the_new_owner_and_a_dropped_broker_is_tolerated() -> None:
    p = FailoverPolicy(("a1", "a2", "a3"), FAST, random.Random(1), now=0.0)
    p.connect_failed("a1", 0.0)
    assert p.next_attempt(0.0).broker == "a2"
    p.set_preference(("a4", "a2", "a3"), 0.5)
    assert p.next_attempt(0.5).broker == "a4"
    # A connection to a1 made with the old list ends: no error, the next walk is from a4.
    p.lost("a1", 1.0)
    p.connect_failed("a1", 1.0)
    assert p.next_attempt(1.0).broker == "a4"


def site(weights: dict[str, float]) -> SiteConfig:
    return SiteConfig(
        id="plant-1",
        brokers=[BrokerConfig(id=b, port=20000 + i, weight=w) for i, (b, w) in enumerate(sorted(weights.items()))],
    )


def test_site_from_ring_document_reads_the_new_broker_and_rejects_garbage() -> None:
    old = site({"a1": 1, "a2": 1, "a3": 1})
    new = site({"a1": 1, "a2": 1, "a3": 1, "a4": 2})
    got = site_from_ring_document(old, json.dumps(ring_document(new)).encode())
    assert got is not None and got.broker("a4").port == new.broker("a4").port and got.broker("a4").weight == 2
    assert [b.id for b in preference(got, "dev-0001")] == [b.id for b in preference(new, "dev-0001")]
    other = new.model_copy(update={"id": "plant-2"})
    for bad in (
        b"",
        b"{",
        b"[]",
        json.dumps(ring_document(other)).encode(),
        json.dumps({"site": "plant-1", "brokers": [{"id": "a1"}]}).encode(),
        json.dumps(ring_document(site({"a1": 0}))).encode(),
    ):
        assert site_from_ring_document(old, bad) is None, bad


def test_ring_document_digest_tells_rings_apart() -> None:
    a = ring_document(site({"a1": 1, "a2": 1, "a3": 1}))
    b = ring_document(site({"a1": 1, "a2": 1, "a3": 1, "a4": 1}))
    c = ring_document(site({"a1": 1, "a2": 1, "a3": 2}))
    assert len({a["digest"], b["digest"], c["digest"]}) == 3
    assert a["digest"] == ring_document(site({"a3": 1, "a2": 1, "a1": 1}))["digest"]


@settings(max_examples=40, deadline=None)
@given(
    devices=st.lists(st.integers(1, 10_000), min_size=1, max_size=30, unique=True),
    weight=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 1000),
)
def test_after_a_broker_joins_exactly_its_new_devices_move_and_only_to_it(
    devices: list[int], weight: float, seed: int
) -> None:
    old, new = Ring.uniform(["a1", "a2", "a3"]), Ring.uniform(["a1", "a2", "a3"]).with_broker("a4", weight)
    for n in devices:
        key = f"plant-1/dev-{n:04d}"
        p = at_home(tuple(old.preference(key, 3)), seed + n)
        changed = p.set_preference(new.preference(key, 4), 10.0)
        run_probes(p, 10.0 + FAST.move_window_s + FAST.hold_down_s + 5 * FAST.probe_interval_s)
        if new.owner(key) == old.owner(key):
            assert not changed and p.status.state is State.HOME and p.status.broker == old.owner(key)
        else:
            assert changed and new.owner(key) == "a4"
            assert p.status.state is State.RETURNING and p.next_attempt(100.0).broker == "a4"
