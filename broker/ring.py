"""Which broker of a site owns a device: weighted rendezvous hashing (straw2).

How it works
------------
Every (key, broker) pair gets a pseudo-random draw ``u`` in (0, 1); the broker
with the best score ``ln(u) / w`` owns the key, and sorting all brokers by score
gives the preference list (Ceph's straw2).  ``-ln(u)/w`` is an exponential race
with rate ``w``, so broker ``b`` wins with probability exactly ``w_b / sum(w)``.
The order is total: equal scores are broken by the larger ``u``, then by the
smaller broker id.

A broker's score depends only on the key and that broker's own id and weight, so
the scheme is exactly monotone: adding, removing or re-weighting one broker can
only move keys to or from that broker, and removing a broker promotes
``preference[1]`` to owner for every key it owned.  There are no virtual nodes to
tune; balance is as good as the draws are independent.

The draw: the key's UTF-8 bytes are hashed once with BLAKE2b (64 bits, pinned
personalisation), then mixed with two 64-bit seeds per broker (BLAKE2b of the
broker id) by two rounds of ``m = (v ^ seed) * K; v = lo64(m) ^ hi64(m)`` (the
"mum" mix of wyhash); the top 52 bits of ``v`` become ``u`` (lowest bit forced
to 1, so ``u > 0``).  For speed in pure Python the rounds run on *all brokers at
once*: seeds sit side by side in one big integer, 128 bits per broker, so a round
is a handful of big-int operations, and one ``struct.unpack`` reads every
broker's ``1 + u`` as an IEEE double straight from the bits.  Brokers are laid out
grouped by weight: ``ln`` is monotone, so within a group only the largest ``u``
can win, and an owner lookup takes one ``log`` per distinct weight (none when all
weights are equal).  Nothing depends on Python's salted ``hash()`` or on the order
brokers were listed in: every process that reads the same cluster file computes
the same owners.

A ``Ring`` is immutable; ``with_broker``/``without_broker`` return a new ring
(tens of microseconds).

What it does not do
-------------------
No I/O, no clocks, no logging, no knowledge of liveness: a ring says who *should*
own a key; whether that broker is up is the caller's business (walk
``preference``).  It does not cache lookups.  Exactness caveat for rings with
unequal weights: scores go through the platform's ``math.log``, so an owner could
differ between two libm implementations only where two brokers' scores for a key
agree to the last bit (on the order of 1e-13 per key at 50 brokers).
Equal-weight rings compare the draws themselves and are bit-exact everywhere.
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
from collections.abc import Iterable, Mapping
from functools import lru_cache
from itertools import repeat
from types import MappingProxyType

from broker.errors import RingError

__all__ = ["Ring", "moves"]

# Pinned constants: changing any of them changes owners (tests pin a few owners).
_KEY_PERSON = b"edgemq.key.v1"
_SEED_PERSON = b"edgemq.seed.v1"
_K1 = 0x9E3779B97F4A7C15  # odd 64-bit multipliers (golden ratio, splitmix64)
_K2 = 0xBF58476D1CE4E5B9
_M64 = (1 << 64) - 1
_LIMB = 128  # bits per broker in the packed integers: room for a 64x64-bit product
_MANTISSA = (1 << 52) - 1
_ONE = 0x3FF << 52  # IEEE-754 exponent bits of 1.0: mantissa m reads as 1 + m / 2**52

_blake2b = hashlib.blake2b
_log = math.log
_sub = operator.sub
_mul = operator.mul


def _key_digest(key: str) -> bytes:
    """The pinned 64-bit hash of a key: BLAKE2b of its UTF-8 bytes, the only hash keys get."""
    return _blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, person=_KEY_PERSON).digest()


@lru_cache(maxsize=4096)
def _seeds(broker_id: str) -> tuple[int, int]:
    """The two 64-bit mixing seeds of a broker, from its id alone."""
    digest = _blake2b(broker_id.encode("utf-8", "surrogatepass"), digest_size=16, person=_SEED_PERSON).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def _check(broker_id: object, weight: object) -> float:
    if not isinstance(broker_id, str) or not broker_id:
        raise RingError(
            f"broker id must be a non-empty string, got {broker_id!r}",
            hint="give every broker of the site an id in the cluster file",
            broker=broker_id,
        )
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise RingError(
            f"weight of broker {broker_id!r} must be a number, got {weight!r}",
            hint="use a finite weight >= 0 (0 owns nothing)",
            broker=broker_id,
            value=weight,
        )
    value = float(weight)
    if not math.isfinite(value) or value < 0:
        raise RingError(
            f"weight of broker {broker_id!r} must be finite and >= 0, got {weight!r}",
            hint="use a finite weight >= 0 (0 owns nothing)",
            broker=broker_id,
            value=weight,
        )
    return value


class Ring:
    """An immutable weighted-rendezvous ring over one site's brokers."""

    __slots__ = (
        "_groups",
        "_ids",
        "_inv",
        "_layout",
        "_lo",
        "_mask",
        "_nbytes",
        "_rep",
        "_s1",
        "_s2",
        "_slices",
        "_tag",
        "_unpack",
        "_weights",
    )

    def __init__(self, brokers: Mapping[str, float] | Iterable[tuple[str, float]]) -> None:
        """Build a ring from ``{id: weight}`` or ``(id, weight)`` pairs; listing order does not matter."""
        pairs = brokers.items() if isinstance(brokers, Mapping) else brokers
        weights: dict[str, float] = {}
        for item in pairs:
            try:
                broker_id, weight = item
            except (TypeError, ValueError):
                raise RingError(
                    f"expected (broker id, weight), got {item!r}",
                    hint="pass {id: weight} or (id, weight) pairs",
                    value=item,
                ) from None
            value = _check(broker_id, weight)
            if broker_id in weights:
                raise RingError(
                    f"broker {broker_id!r} is listed twice",
                    hint="broker ids must be unique within a site",
                    broker=broker_id,
                )
            weights[broker_id] = value
        if not weights:
            raise RingError("a ring needs at least one broker", hint="list the site's brokers")
        ids = tuple(sorted(weights))
        # Live brokers (weight > 0) grouped by weight, ids ascending inside a group.
        layout = tuple(sorted((b for b in ids if weights[b] > 0), key=lambda b: (-weights[b], b)))
        if not layout:
            raise RingError(
                "every broker has weight 0, so nobody can own a key",
                hint="give at least one broker a positive weight",
                brokers=list(ids),
            )
        groups: list[tuple[int, int, float]] = []
        for i, b in enumerate(layout):
            if groups and weights[layout[groups[-1][0]]] == weights[b]:
                groups[-1] = (groups[-1][0], i + 1, groups[-1][2])
            else:
                groups.append((i, i + 1, 1.0 / weights[b]))
        n = len(layout)
        self._ids = ids
        self._weights: Mapping[str, float] = MappingProxyType({b: weights[b] for b in ids})
        self._layout = layout
        # None when all live weights are equal: the owner is then simply the largest draw.
        self._slices = tuple(slice(a, b) for a, b, _ in groups) if len(groups) > 1 else None
        self._groups = tuple((slice(a, b), inv) for a, b, inv in groups)
        self._inv = tuple(1.0 / weights[b] for b in layout)
        # Packed integers: broker i of `layout` occupies bits [128*i, 128*i + 128).
        self._rep = sum(1 << (_LIMB * i) for i in range(n))
        self._lo = self._rep * _M64
        self._mask = self._rep * _MANTISSA
        self._tag = self._rep * (_ONE | 1)
        self._s1 = sum(_seeds(b)[0] << (_LIMB * i) for i, b in enumerate(layout))
        self._s2 = sum(_seeds(b)[1] << (_LIMB * i) for i, b in enumerate(layout))
        self._nbytes = n * _LIMB // 8
        self._unpack = struct.Struct("<" + "d8x" * n).unpack

    @classmethod
    def uniform(cls, broker_ids: Iterable[str], weight: float = 1.0) -> Ring:
        """A ring where every broker has the same weight."""
        return cls((b, weight) for b in broker_ids)

    # -- accessors ------------------------------------------------------------

    @property
    def brokers(self) -> tuple[str, ...]:
        """Every broker id, weight 0 included, sorted."""
        return self._ids

    @property
    def weights(self) -> Mapping[str, float]:
        """Read-only ``{id: weight}`` in id order, weight 0 included."""
        return self._weights

    @property
    def shares(self) -> dict[str, float]:
        """Expected share of keys per broker: ``w / sum(w)``."""
        total = math.fsum(self._weights.values())
        return {b: w / total for b, w in self._weights.items()}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, broker_id: object) -> bool:
        return broker_id in self._weights

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return dict(self._weights) == dict(other._weights)

    def __hash__(self) -> int:
        return hash(tuple(self._weights.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{b!r}: {w:g}" for b, w in self._weights.items())
        return f"Ring({{{inner}}})"

    # -- lookups --------------------------------------------------------------

    def _draws(self, key: str) -> tuple[float, ...]:
        """``1 + u`` for every live broker, in layout order; ``u`` in (0, 1)."""
        h = int.from_bytes(_key_digest(key), "little")
        p = ((h * self._rep) ^ self._s1) * _K1
        v = p ^ (p >> 64)
        p = ((v & self._lo) ^ self._s2) * _K2
        v = (((p ^ (p >> 64)) >> 12) & self._mask) | self._tag
        return self._unpack(v.to_bytes(self._nbytes, "little"))

    def owner(self, key: str) -> str:
        """The broker that owns ``key``."""
        d = self._draws(key)
        if self._slices is None:
            return self._layout[d.index(max(d))]
        # One log per weight group: within a group only the largest draw can win.
        scores = [_log(max(d[group]) - 1.0) * inv for group, inv in self._groups]
        best = max(scores)
        if scores.count(best) == 1:
            group = self._slices[scores.index(best)]
            return self._layout[d.index(max(d[group]), group.start)]
        # Exact tie between groups (vanishingly rare): the larger draw, then the smaller id.
        tied = [(-max(d[g]), g.start) for g, score in zip(self._slices, scores, strict=True) if score == best]
        winners = [self._layout[d.index(-top, start)] for top, start in tied if top == min(tied)[0]]
        return min(winners)

    def preference(self, key: str, n: int) -> list[str]:
        """The owner of ``key`` then its distinct successors: ``min(n, live brokers)`` ids, never weight 0."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RingError(f"a preference list needs n >= 1, got {n!r}", hint="ask for at least the owner", value=n)
        if n == 1:
            return [self.owner(key)]
        d = self._draws(key)
        layout = self._layout
        if self._slices is None:
            by_draw = sorted(zip(map(operator.neg, d), layout, strict=True))
            return [b for _, b in by_draw[:n]]
        scores = map(_mul, map(_log, map(_sub, d, repeat(1.0))), self._inv)
        by_score = sorted(zip(map(operator.neg, scores), map(operator.neg, d), layout, strict=True))
        return [b for _, _, b in by_score[:n]]

    # -- membership -----------------------------------------------------------

    def with_broker(self, broker_id: str, weight: float = 1.0) -> Ring:
        """A new ring with ``broker_id`` at ``weight`` (added, or re-weighted if present)."""
        weights = dict(self._weights)
        weights[broker_id] = weight
        return Ring(weights)

    def without_broker(self, broker_id: str) -> Ring:
        """A new ring without ``broker_id``."""
        if broker_id not in self._weights:
            raise RingError(
                f"broker {broker_id!r} is not in the ring",
                hint=f"known brokers: {', '.join(self._ids)}",
                broker=broker_id,
            )
        return Ring((b, w) for b, w in self._weights.items() if b != broker_id)


def moves(old: Ring, new: Ring, keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Which keys change owner from ``old`` to ``new``: ``{key: (old_owner, new_owner)}``."""
    changed: dict[str, tuple[str, str]] = {}
    for key in keys:
        before, after = old.owner(key), new.owner(key)
        if before != after:
            changed[key] = (before, after)
    return changed
