"""Hypothesis properties of devices.failover, driven through a simulated world of brokers going up and down.

A tiny discrete-event shell plays the device: it asks the policy where to connect,
the world answers (a broker is up or down during each segment of time), connections
break when their broker goes down, probes see whether the owner is up.

Properties: attempts follow the preference list; the only voluntary move is home
and needs the owner healthy at every probe for the hold-down (so voluntary moves are
at least a hold-down apart); once every broker stays up, the device is home within
a bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.failover import FailoverPolicy, FailoverSettings, State

BROKERS = ("a1", "a2", "a3", "a4")


@dataclass
class World:
    """Piecewise-constant availability: segment k covers [starts[k], starts[k+1])."""

    starts: list[float]
    up: list[frozenset[str]]

    def is_up(self, broker: str, t: float) -> bool:
        k = max(i for i, s in enumerate(self.starts) if s <= t)
        return broker in self.up[k]

    def next_down(self, broker: str, t: float) -> float | None:
        for s, up in zip(self.starts, self.up, strict=True):
            if s > t and broker not in up:
                return s
        return None


@dataclass
class Trace:
    attempts: list[tuple[float, int, str, bool]] = field(default_factory=list)  # (t, index, broker, ok)
    probes: list[tuple[float, bool]] = field(default_factory=list)
    voluntary: list[float] = field(default_factory=list)
    away_since: list[float] = field(default_factory=list)  # when each stint away began, per voluntary move
    events: list[str] = field(default_factory=list)
    home_at: float | None = None


def drive(pref: tuple[str, ...], cfg: FailoverSettings, seed: int, world: World, until: float) -> Trace:
    p = FailoverPolicy(pref, cfg, random.Random(seed), 0.0)
    tr = Trace()
    t = 0.0
    on: str | None = None
    stint = 0.0
    steps = 0
    while t < until:
        steps += 1
        assert steps < 100_000, "the policy never advanced"
        if on is None:
            a = p.next_attempt(t)
            assert a.at >= t and a.broker == pref[a.index]
            t = a.at
            if t >= until:
                break
            ok = world.is_up(a.broker, t)
            tr.attempts.append((t, a.index, a.broker, ok))
            tr.events.append("attempt")
            if ok:
                p.connected(a.broker, t)
                on = a.broker
                stint = t
                if a.index == 0:
                    tr.home_at = tr.home_at if tr.home_at is not None else t
                else:
                    tr.home_at = None
            else:
                p.connect_failed(a.broker, t)
            continue
        down = world.next_down(on, t)
        probe = p.next_probe_at
        if on == pref[0]:
            assert probe is None, "never probes while home"
        nxt = min(x for x in (down, probe, until) if x is not None)
        t = max(t, nxt)
        if t >= until:
            break
        if down is not None and t == down:
            p.lost(on, t)
            tr.events.append("lost")
            on = None
            tr.home_at = None
            continue
        ok = world.is_up(pref[0], t)
        tr.probes.append((t, ok))
        if p.probe_result(ok, t):
            assert on != pref[0], "never leaves home voluntarily"
            assert p.status.state is State.RETURNING
            tr.voluntary.append(t)
            tr.away_since.append(stint)
            tr.events.append("voluntary")
            on = None
    return tr


@st.composite
def worlds(draw: st.DrawFn, settle: bool) -> tuple[tuple[str, ...], World, float]:
    n = draw(st.integers(2, 4))
    pref = tuple(draw(st.permutations(BROKERS[:n])))
    k = draw(st.integers(1, 12))
    durations = draw(st.lists(st.floats(0.05, 30.0), min_size=k, max_size=k))
    ups = draw(st.lists(st.frozensets(st.sampled_from(pref)), min_size=k, max_size=k))
    starts = [0.0]
    for d in durations[:-1]:
        starts.append(starts[-1] + d)
    end = starts[-1] + durations[-1]
    if settle:
        starts.append(end)
        ups.append(frozenset(pref))
    return pref, World(starts, list(ups)), end


settings_st = st.builds(
    FailoverSettings,
    probe_interval_s=st.floats(0.1, 5.0),
    probe_jitter=st.floats(0.0, 0.9),
    hold_down_s=st.floats(0.0, 20.0),
    retry_min_s=st.floats(0.05, 1.0),
    retry_max_s=st.floats(1.0, 8.0),
    stable_s=st.floats(0.0, 10.0),
)


@settings(max_examples=300, deadline=None)
@given(worlds(settle=False), settings_st, st.integers(0, 2**32))
def test_attempts_follow_the_preference_list(
    w: tuple[tuple[str, ...], World, float], cfg: FailoverSettings, seed: int
) -> None:
    pref, world, end = w
    tr = drive(pref, cfg, seed, world, end + 60)
    prev: tuple[int, bool] | None = None
    for (_, index, broker, ok), event_before in zip(tr.attempts, _event_before_attempts(tr), strict=True):
        assert broker == pref[index]
        if prev is None or prev[1] or event_before != "attempt":
            assert index == 0, "a walk starts at the owner"
        else:
            assert index == (prev[0] + 1) % len(pref), "a failed attempt moves one step down the list"
        prev = (index, ok)


def _event_before_attempts(tr: Trace) -> list[str]:
    out = []
    last = "start"
    for e in tr.events:
        if e == "attempt":
            out.append(last)
        last = e
    return out


@settings(max_examples=300, deadline=None)
@given(worlds(settle=False), settings_st, st.integers(0, 2**32))
def test_never_flaps_faster_than_the_hold_down(
    w: tuple[tuple[str, ...], World, float], cfg: FailoverSettings, seed: int
) -> None:
    pref, world, end = w
    tr = drive(pref, cfg, seed, world, end + 60)
    for t, since in zip(tr.voluntary, tr.away_since, strict=True):
        window = [ok for pt, ok in tr.probes if since < pt <= t and pt >= t - cfg.hold_down_s]
        assert window and all(window), "went home with a failed probe inside the hold-down"
        streak_start = max((pt for pt, ok in tr.probes if since < pt <= t and not ok), default=since)
        first_ok = min(pt for pt, ok in tr.probes if streak_start < pt <= t and ok)
        assert t - first_ok >= cfg.hold_down_s
    for a, b in zip(tr.voluntary, tr.voluntary[1:], strict=False):
        assert b - a >= cfg.hold_down_s


@settings(max_examples=300, deadline=None)
@given(worlds(settle=True), settings_st, st.integers(0, 2**32))
def test_goes_home_once_the_owner_is_healthy(
    w: tuple[tuple[str, ...], World, float], cfg: FailoverSettings, seed: int
) -> None:
    pref, world, settled_at = w
    bound = cfg.retry_max_s + cfg.hold_down_s + 2 * cfg.probe_interval_s * (1 + cfg.probe_jitter) + 1e-6
    tr = drive(pref, cfg, seed, world, settled_at + bound + 1.0)
    assert tr.home_at is not None and tr.home_at <= settled_at + bound, (tr.home_at, settled_at, bound)
