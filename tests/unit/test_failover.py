"""devices.failover: the pure failover policy, step by step (no sockets, no clocks)."""

from __future__ import annotations

import random

import pytest

from devices.failover import FailoverPolicy, FailoverSettings, State, backoff_delay

PREF = ("a1", "a2", "a3")
FAST = FailoverSettings(probe_interval_s=1.0, probe_jitter=0.2, hold_down_s=5.0, retry_min_s=0.5, retry_max_s=4.0)


def policy(settings: FailoverSettings = FAST, seed: int = 1) -> FailoverPolicy:
    return FailoverPolicy(PREF, settings, random.Random(seed), now=0.0)


def test_starts_by_connecting_to_the_owner() -> None:
    p = policy()
    a = p.next_attempt(0.0)
    assert (a.broker, a.index, a.at) == ("a1", 0, 0.0)
    assert p.status.state is State.CONNECTING and p.owner == "a1"
    s = p.connected("a1", 0.1)
    assert s.state is State.HOME and s.broker == "a1" and s.reason == "home (owner)"
    assert p.next_probe_at is None  # nothing to probe at home


def test_walks_the_preference_list_without_delay_then_backs_off() -> None:
    p = policy()
    p.connect_failed("a1", 1.0)
    a = p.next_attempt(1.0)
    assert (a.broker, a.at) == ("a2", 1.0) and "owner a1 unreachable" in a.reason
    p.connect_failed("a2", 1.1)
    assert p.next_attempt(1.1).broker == "a3"
    p.connect_failed("a3", 1.2)
    a = p.next_attempt(1.2)
    assert a.broker == "a1" and 1.2 + 0.25 <= a.at <= 1.2 + 0.5  # a whole pass failed: back-off
    for b in PREF:
        p.connect_failed(b, a.at)
    a2 = p.next_attempt(a.at)
    assert a.at + 0.5 <= a2.at <= a.at + 1.0  # and it grows


def test_failover_probes_the_owner_with_jitter_and_holds_down() -> None:
    p = policy()
    p.connect_failed("a1", 0.0)
    s = p.connected("a2", 0.0)
    assert s.state is State.FAILOVER and s.broker == "a2" and "owner a1 unreachable" in s.reason
    t = p.next_probe_at
    assert t is not None and 0.8 <= t <= 1.2
    assert p.probe_result(False, t) is False
    # Healthy from the first good probe on; home only once healthy for the hold-down (5 s).
    first_ok = p.next_probe_at
    assert first_ok is not None
    decided = None
    now = first_ok
    while decided is None:
        if p.probe_result(True, now):
            decided = now
        else:
            nxt = p.next_probe_at
            assert nxt is not None
            now = nxt
    assert decided - first_ok >= 5.0
    assert decided - first_ok <= 5.0 + 1.2
    assert p.status.state is State.RETURNING and p.status.broker == "a2" and "healthy for" in p.status.reason
    a = p.next_attempt(decided)
    assert (a.broker, a.at) == ("a1", decided) and "returning" in a.reason
    s = p.connected("a1", decided + 0.1)
    assert s.state is State.HOME and "returned: owner healthy for" in s.reason


def test_a_failed_probe_restarts_the_hold_down() -> None:
    p = policy(FailoverSettings(probe_interval_s=1.0, probe_jitter=0.0, hold_down_s=3.0))
    p.connect_failed("a1", 0.0)
    p.connected("a2", 0.0)
    assert [p.probe_result(ok, t) for ok, t in [(True, 1), (True, 2), (False, 3), (True, 4), (True, 5)]] == [False] * 5
    assert p.probe_result(True, 6) is False
    assert p.probe_result(True, 7) is True  # healthy since 4, for 3 s


def test_return_that_fails_goes_back_to_the_successor_and_holds_down_again() -> None:
    p = policy(FailoverSettings(probe_interval_s=1.0, probe_jitter=0.0, hold_down_s=0.0))
    p.connect_failed("a1", 0.0)
    p.connected("a2", 0.0)
    assert p.probe_result(True, 1.0) is True
    p.connect_failed("a1", 1.1)
    a = p.next_attempt(1.1)
    assert (a.broker, a.at) == ("a2", 1.1)
    assert p.connected("a2", 1.2).state is State.FAILOVER
    assert p.next_probe_at == pytest.approx(2.2)


def test_a_lost_connection_retries_the_owner_first_after_a_short_jittered_pause() -> None:
    p = policy()
    p.connected("a1", 0.0)
    p.lost("a1", 20.0)
    assert p.status.state is State.CONNECTING and "lost" in p.status.reason
    a = p.next_attempt(20.0)
    assert a.broker == "a1" and 20.25 <= a.at <= 20.5
    p.connect_failed("a1", a.at)
    assert p.next_attempt(a.at).broker == "a2" and p.next_attempt(a.at).at == a.at


def test_connections_that_keep_breaking_back_off() -> None:
    p = policy()
    pauses = []
    now = 0.0
    for _ in range(5):
        p.connected("a1", now)
        p.lost("a1", now + 0.1)
        a = p.next_attempt(now + 0.1)
        pauses.append(a.at - (now + 0.1))
        now = a.at
    assert pauses[-1] > pauses[0] * 3 and max(pauses) <= 4.0


def test_a_late_probe_result_changes_nothing() -> None:
    p = policy(FailoverSettings(hold_down_s=0.0))
    p.connected("a1", 0.0)
    assert p.probe_result(True, 1.0) is False
    assert p.status.state is State.HOME


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="distinct"):
        FailoverPolicy(["a1", "a1"], FAST, random.Random(1), 0.0)
    with pytest.raises(ValueError, match="distinct"):
        FailoverPolicy([], FAST, random.Random(1), 0.0)
    with pytest.raises(ValueError, match="not in the preference list"):
        policy().connected("zz", 0.0)
    with pytest.raises(ValueError, match="invalid"):
        FailoverSettings(probe_jitter=1.0)
    with pytest.raises(ValueError, match="invalid"):
        FailoverSettings(retry_min_s=2.0, retry_max_s=1.0)


def test_backoff_delay_bounds() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        d = backoff_delay(attempt, rng, 0.5, 15.0)
        c = min(15.0, 0.5 * 2**attempt)
        assert c / 2 <= d <= c


def test_same_seed_same_decisions() -> None:
    def run(seed: int) -> list[float]:
        p = policy(seed=seed)
        p.connect_failed("a1", 0.0)
        p.connected("a2", 0.0)
        out = []
        for _ in range(5):
            t = p.next_probe_at
            assert t is not None
            out.append(t)
            p.probe_result(False, t)
        return out

    assert run(7) == run(7) != run(8)
