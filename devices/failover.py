"""Where a device connects next: the failover policy, a pure state machine.

How it works
------------
A device has a preference list from the site's ring: its owner first, then the
distinct successors. The shell (``devices.fleet``) asks ``next_attempt(now)``
where to connect and not before when, tries it, and reports back with
``connected``, ``connect_failed`` or ``lost``. While the device is connected
away from its owner the policy schedules probes of the owner (``next_probe_at``,
jittered so a fleet does not probe in lock-step); the shell runs a probe (a short
MQTT CONNECT check) and reports ``probe_result``. Once the owner has answered
every probe for ``hold_down_s``, ``probe_result`` returns True: the shell leaves
its current broker cleanly and the next attempt is the owner.

All transitions, in one table (``i`` is the index in the preference list the
next attempt goes to; a *walk* is a pass over the list from the owner down)::

    state        event                 next state    effect
    -----------  --------------------  ------------  --------------------------------------------
    connecting   connected(owner)      home
    connecting   connected(other)      failover      first probe of the owner in ~probe_interval
    connecting   connect_failed(b)     connecting    i += 1 now; past the end: i = 0 after back-off
    returning    connected(owner)      home
    returning    connect_failed(owner) connecting    i = 1 now (back to a successor, no hold-down skip)
    home         lost                  connecting    i = 0 after a short jittered back-off
    failover     lost                  connecting    i = 0 after a short jittered back-off
    failover     probe_result(False)   failover      owner's healthy streak reset; next probe
    failover     probe_result(True)    failover      streak grows; next probe
                 ... streak >= hold    returning     i = 0 now; the shell disconnects and goes home
    home/failover set_preference       home          the new owner is the broker it is on
    home/failover set_preference       failover      owner changed: first probe of the new owner
                                                     after a random delay in [0, move_window_s]
    any          set_preference        (unchanged)   same owner: nothing moves (successors updated)
    connecting/  set_preference        (unchanged)   owner changed: the next walk starts at the new
    returning                                        owner (a returning device goes there directly)

Back-off: the k-th consecutive delay is uniform in [c/2, c], c = min(max, min·2^k)
(jitter from the ``rng`` passed in). It grows after a whole walk failed, or
after a connection broke before it had been up ``stable_s``; a connection that
lasted resets it. A walk after a lost connection starts at the owner again, so
a short blip of the owner does not send the device away.

No flapping: the only voluntary move is back to the owner, and it needs the
owner healthy at every probe for ``hold_down_s``; so voluntary moves are at
least ``hold_down_s`` apart. Moves forced by a broken connection are not
voluntary and follow the back-off.

Ring changes (``set_preference``): when the site's ring changes (a broker joined
or left), the shell hands the device its new preference list. A device whose
owner did not change does nothing. One whose owner changed and that is connected
elsewhere becomes a failover device of its new owner: it probes it after a random
delay (uniform in [0, ``move_window_s``], from the policy's ``rng``, so a fleet's
moves spread over the window) and goes there after the usual hold-down; it never
leaves a working connection for a broker that does not answer.

What it does not do
-------------------
No sockets, no clocks (``now`` is passed in, any monotonic seconds), no
logging, no global randomness (the ``rng`` is passed in). It does not run
probes or connections, and it does not know why a connection failed: refused,
timed out or rejected by an ownership policy are all ``connect_failed``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Attempt", "FailoverPolicy", "FailoverSettings", "State", "Status", "backoff_delay"]


class State(StrEnum):
    """Where a device is with respect to its owner."""

    CONNECTING = "connecting"
    HOME = "home"
    FAILOVER = "failover"
    RETURNING = "returning"


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """The knobs of the policy (the fleet's config carries them)."""

    probe_interval_s: float = 5.0
    probe_jitter: float = 0.5  # each interval is uniform in [1 - j, 1 + j] x probe_interval_s
    hold_down_s: float = 30.0
    retry_min_s: float = 0.5
    retry_max_s: float = 15.0
    stable_s: float = 10.0  # a connection that lasted this long resets the back-off
    move_window_s: float = 30.0  # after a ring change, the first probe of a new owner is uniform in [0, this]

    def __post_init__(self) -> None:
        if self.probe_interval_s <= 0 or self.retry_min_s <= 0 or self.retry_max_s < self.retry_min_s:
            raise ValueError(f"invalid failover settings: {self}")
        if not 0 <= self.probe_jitter < 1 or self.hold_down_s < 0 or self.stable_s < 0 or self.move_window_s < 0:
            raise ValueError(f"invalid failover settings: {self}")


@dataclass(frozen=True, slots=True)
class Attempt:
    """Connect to ``broker`` (preference ``index``, 0 = owner), not before ``at``."""

    broker: str
    index: int
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Status:
    """Where the device is and why, since when."""

    state: State
    broker: str | None
    reason: str
    since: float


def backoff_delay(attempt: int, rng: random.Random, base_s: float, cap_s: float) -> float:
    """Delay before retry ``attempt`` (0-based): uniform in [c/2, c], c = min(cap, base·2^attempt)."""
    ceiling = min(cap_s, base_s * 2 ** min(attempt, 32))
    return rng.uniform(ceiling / 2, ceiling)


class FailoverPolicy:
    """One device's failover decisions over its preference list (owner first)."""

    def __init__(self, preference: Sequence[str], settings: FailoverSettings, rng: random.Random, now: float) -> None:
        if not preference or len(set(preference)) != len(preference):
            raise ValueError(f"a preference list needs distinct brokers, got {list(preference)!r}")
        self.preference: tuple[str, ...] = tuple(preference)
        self._known = set(self.preference)  # brokers of this and earlier preference lists
        self.settings = settings
        self._rng = rng
        self._index = 0
        self._not_before = now
        self._passes = 0  # consecutive back-offs
        self._connected_at: float | None = None
        self._healthy_since: float | None = None
        self._next_probe: float | None = None
        self._status = Status(State.CONNECTING, None, f"connecting to owner {self.owner}", now)

    # -- what the shell reads ---------------------------------------------------------------

    @property
    def owner(self) -> str:
        """The device's owner: preference[0]."""
        return self.preference[0]

    @property
    def status(self) -> Status:
        """Where the device is and why."""
        return self._status

    @property
    def next_probe_at(self) -> float | None:
        """When to probe the owner next; None unless connected away from it."""
        return self._next_probe

    def next_attempt(self, now: float) -> Attempt:
        """Where to connect next, and not before when."""
        broker = self.preference[self._index]
        at = max(now, self._not_before)
        if self._status.state is State.RETURNING:
            reason = f"returning to owner {self.owner}"
        elif self._index == 0:
            reason = f"connecting to owner {self.owner}"
        else:
            reason = f"owner {self.owner} unreachable, trying preference {self._index + 1}"
        return Attempt(broker, self._index, at, reason)

    # -- what the shell reports ---------------------------------------------------------------

    def connected(self, broker: str, now: float) -> Status:
        """The device's connection to ``broker`` is up."""
        index = self._position(broker)
        self._connected_at = now
        self._index = 0
        if index == 0:
            why = "owner"
            if self._status.state is State.RETURNING and self._healthy_since is not None:
                why = f"returned: owner healthy for {now - self._healthy_since:.1f}s"
            self._status = Status(State.HOME, broker, f"home ({why})", now)
            self._next_probe = None
        else:
            self._status = Status(
                State.FAILOVER, broker, f"failover: owner {self.owner} unreachable (preference {index + 1})", now
            )
            self._next_probe = now + self._probe_interval()
        self._healthy_since = None
        return self._status

    def connect_failed(self, broker: str, now: float) -> None:
        """An attempt to connect to ``broker`` failed (refused, timed out, rejected)."""
        index = self._position(broker)
        self._connected_at = None
        self._next_probe = None
        self._healthy_since = None
        self._index = index + 1
        if index >= len(self.preference):  # a broker a ring change dropped: walk from the owner now
            self._index = 0
            self._not_before = now
        elif self._index < len(self.preference):
            self._not_before = now
        else:
            self._index = 0
            self._not_before = now + self._backoff()
        returning = self._status.state is State.RETURNING
        reason = f"owner {self.owner} failed on return" if returning else f"{broker} unreachable"
        self._status = Status(State.CONNECTING, None, reason, now)

    def lost(self, broker: str, now: float) -> None:
        """An established connection to ``broker`` broke (not one the device closed to go home)."""
        self._position(broker)
        if self._connected_at is not None and now - self._connected_at >= self.settings.stable_s:
            self._passes = 0
        self._connected_at = None
        self._next_probe = None
        self._healthy_since = None
        self._index = 0
        self._not_before = now + self._backoff()
        self._status = Status(State.CONNECTING, None, f"connection to {broker} lost", now)

    def probe_result(self, ok: bool, now: float) -> bool:
        """The owner answered a probe (``ok``) or not; True means: leave now and go home."""
        if self._status.state is not State.FAILOVER:
            return False  # a late probe after the device moved: nothing to decide
        if not ok:
            self._healthy_since = None
        elif self._healthy_since is None:
            self._healthy_since = now
        if self._healthy_since is not None and now - self._healthy_since >= self.settings.hold_down_s:
            self._next_probe = None
            self._index = 0
            self._not_before = now
            self._status = Status(
                State.RETURNING,
                self._status.broker,
                f"returning: owner {self.owner} healthy for {now - self._healthy_since:.1f}s",
                now,
            )
            return True
        self._next_probe = now + self._probe_interval()
        return False

    def set_preference(self, preference: Sequence[str], now: float) -> bool:
        """The site's ring changed: adopt ``preference`` (owner first). True if the owner changed.

        Same owner: nothing moves. New owner and connected elsewhere: failover towards it,
        first probe after a random delay in [0, move_window_s], then the normal hold-down.
        """
        if not preference or len(set(preference)) != len(preference):
            raise ValueError(f"a preference list needs distinct brokers, got {list(preference)!r}")
        old_owner = self.owner
        self.preference = tuple(preference)
        self._known.update(self.preference)
        if self._index >= len(self.preference):
            self._index = 0
        if self.owner == old_owner:
            return False
        state, broker = self._status.state, self._status.broker
        self._healthy_since = None
        if state in (State.CONNECTING, State.RETURNING):
            self._index = 0  # the next walk starts at the new owner
        elif broker == self.owner:
            self._next_probe = None
            self._status = Status(State.HOME, broker, f"home (owner in the new ring, was {old_owner})", now)
        else:
            delay = self._rng.uniform(0.0, self.settings.move_window_s)
            self._next_probe = now + delay
            self._status = Status(
                State.FAILOVER,
                broker,
                f"ring changed: owner now {self.owner} (was {old_owner}), first probe in {delay:.1f}s",
                now,
            )
        return True

    # -- internals -----------------------------------------------------------------------------

    def _position(self, broker: str) -> int:
        try:
            return self.preference.index(broker)
        except ValueError:
            if broker in self._known:  # dropped by a ring change while the device was on it
                return len(self.preference)
            raise ValueError(f"{broker!r} is not in the preference list {self.preference!r}") from None

    def _probe_interval(self) -> float:
        s = self.settings
        return s.probe_interval_s * self._rng.uniform(1.0 - s.probe_jitter, 1.0 + s.probe_jitter)

    def _backoff(self) -> float:
        s = self.settings
        delay = backoff_delay(self._passes, self._rng, s.retry_min_s, s.retry_max_s)
        self._passes += 1
        return delay
