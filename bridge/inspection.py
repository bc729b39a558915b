"""Read-only views of a buffer file, for ``edgemq buffer stats`` and ``peek``.

How it works
------------
The file is opened with SQLite's ``mode=ro`` URI, so inspecting never writes a
row or a counter and never takes the writer's lock: in WAL mode a reader sees
the last committed state while the broker keeps appending, and it works the
same on a file whose broker is stopped (or was killed: the WAL is read, not
replayed into the file). Depth and the counters of the ``meta`` table are read
in one read transaction, so they are from the same commit and balance
(``accepted == forwarded + dropped + depth``).

``drain_estimate`` turns two snapshots of the same file into rates and an
estimated time to drain; ``drain_progress`` turns three (the watch's start, one a
window ago, the latest) into a progress bar's figures and ``site_progress`` adds
brokers up. All three are pure: time is the snapshots' ``taken_at``.

What it does not do
-------------------
No writes, no expiry (rows past their ttl are shown until the broker expires
them), no networking, no clock (callers pass ``now``). sqlite3 errors are mapped
to ``StoreError`` here, once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from bridge.buffer import DROP_REASONS, Stored
from bridge.store import store_error
from broker.errors import StoreError

__all__ = [
    "DrainEstimate",
    "DrainProgress",
    "FileSnapshot",
    "drain_estimate",
    "drain_progress",
    "peek",
    "read_snapshot",
    "site_progress",
]


@dataclass(frozen=True, slots=True)
class FileSnapshot:
    """What one buffer file held at ``taken_at`` (one committed state)."""

    path: str
    taken_at: float
    depth_messages: int
    depth_bytes: int
    oldest_enqueued_at: float | None
    head_seq: int | None
    tail_seq: int | None
    accepted: int
    forwarded: int
    dropped: dict[str, int]
    peak_depth_messages: int
    peak_depth_bytes: int
    last_seq: int

    @property
    def oldest_age_s(self) -> float | None:
        """Age of the oldest buffered message at ``taken_at``."""
        if self.oldest_enqueued_at is None:
            return None
        return max(0.0, self.taken_at - self.oldest_enqueued_at)

    @property
    def balanced(self) -> bool:
        """``accepted == forwarded + dropped + depth``."""
        return self.accepted == self.forwarded + sum(self.dropped.values()) + self.depth_messages


@dataclass(frozen=True, slots=True)
class DrainEstimate:
    """Rates between two snapshots of one file, in messages per second."""

    interval_s: float
    forward_rate: float
    ingest_rate: float
    net_drain_rate: float
    eta_s: float | None  # None: not draining (the backlog holds or grows)


@dataclass(frozen=True, slots=True)
class DrainProgress:
    """How far a backlog has drained since a watch began.

    ``total`` is the backlog seen at the start plus what entered the buffer since;
    ``completed`` is what has left it since (``total - depth``): forwarded, or taken
    out by expiry, eviction or by hand. Only forwarding moves ``forwarded``, so the
    two differ exactly by those drops. ``rate`` (messages leaving per second) and
    ``net_rate`` (depth shrinking per second) are over the last window; they are
    None until a window has passed. ``eta_s`` is ``depth / net_rate``, None when the
    backlog is not shrinking, and then ``stalled`` is true (if it is not empty).
    """

    total: int
    completed: int
    depth: int
    forwarded: int
    rate: float | None
    net_rate: float | None
    eta_s: float | None
    stalled: bool

    @property
    def empty(self) -> bool:
        """Nothing left in the buffer."""
        return self.depth == 0


def _entered(before: FileSnapshot, after: FileSnapshot) -> int:
    """Messages that entered the buffer between two snapshots. ``accepted`` also counts records
    refused at the door (``rejected``, or a rolled-back commit, ``error``): they never held a row."""
    refused = sum(after.dropped.get(r, 0) - before.dropped.get(r, 0) for r in ("rejected", "error"))
    return max(0, after.accepted - before.accepted - refused)


def drain_progress(start: FileSnapshot, window: FileSnapshot, latest: FileSnapshot) -> DrainProgress | None:
    """Progress of the drain from ``start`` to ``latest``; rates between ``window`` and ``latest``.

    Completion is measured on depth, not on the ``forwarded`` counter, so rows removed by
    any door (including by hand, which no counter sees until the broker restarts) count as
    drained and the bar reaches its end exactly when the buffer is empty. None if the
    snapshots are out of order or the file was replaced (counters went backwards): the
    caller starts again from ``latest``.
    """
    if not start.taken_at <= window.taken_at <= latest.taken_at:
        return None
    if latest.accepted < start.accepted or latest.forwarded < start.forwarded:
        return None
    total = start.depth_messages + _entered(start, latest)
    total = max(total, latest.depth_messages)
    completed = total - latest.depth_messages
    dt = latest.taken_at - window.taken_at
    rate: float | None = None
    net: float | None = None
    if dt > 0 and latest.accepted >= window.accepted:
        left_window = window.depth_messages + _entered(window, latest) - latest.depth_messages
        rate = max(0, left_window) / dt
        net = (window.depth_messages - latest.depth_messages) / dt
    eta: float | None
    if latest.depth_messages == 0:
        eta = 0.0
    elif net is not None and net > 0:
        eta = latest.depth_messages / net
    else:
        eta = None
    return DrainProgress(
        total=total,
        completed=completed,
        depth=latest.depth_messages,
        forwarded=latest.forwarded - start.forwarded,
        rate=rate,
        net_rate=net,
        eta_s=eta,
        stalled=latest.depth_messages > 0 and net is not None and net <= 0,
    )


def site_progress(parts: list[DrainProgress]) -> DrainProgress:
    """Brokers added up. They drain in parallel, so the site's time remaining is its slowest
    broker's, unknown if any non-empty broker's is; stalled if any non-empty broker is."""
    busy = [p for p in parts if not p.empty]
    rates = [p.rate for p in parts if p.rate is not None]
    nets = [p.net_rate for p in parts if p.net_rate is not None]
    etas = [p.eta_s for p in busy]
    return DrainProgress(
        total=sum(p.total for p in parts),
        completed=sum(p.completed for p in parts),
        depth=sum(p.depth for p in parts),
        forwarded=sum(p.forwarded for p in parts),
        rate=sum(rates) if rates else None,
        net_rate=sum(nets) if nets else None,
        eta_s=0.0 if not busy else (None if any(e is None for e in etas) else max(e for e in etas if e is not None)),
        stalled=any(p.stalled for p in busy),
    )


@contextlib.contextmanager
def _readonly(path: str | Path) -> Iterator[sqlite3.Connection]:
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no buffer file at {p}", hint="has this broker ever run? check --config", path=str(p))
    try:
        conn = sqlite3.connect(f"file:{quote(str(p.resolve()))}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise _mapped(exc, p) from exc
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("BEGIN")  # one snapshot for every statement below
        yield conn
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _mapped(exc, p) from exc
    finally:
        conn.close()


def _mapped(exc: sqlite3.Error, path: Path) -> StoreError:
    return store_error(exc, str(path))


def read_snapshot(path: str | Path, now: float) -> FileSnapshot:
    """Depth, oldest message and counters of the buffer file at ``path``, read-only."""
    with _readonly(path) as conn:
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            depth, size, head, tail = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), min(seq), max(seq) FROM messages"
            ).fetchone()
            oldest = conn.execute("SELECT enqueued_at FROM messages ORDER BY seq LIMIT 1").fetchone()
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"{path} is not an edgemq buffer: {exc}",
                hint="point --config at the right cluster file",
                path=str(path),
            ) from exc

    def counter(key: str) -> int:
        return int(meta.get(key, 0))

    return FileSnapshot(
        path=str(path),
        taken_at=now,
        depth_messages=int(depth),
        depth_bytes=int(size),
        oldest_enqueued_at=None if oldest is None else float(oldest[0]),
        head_seq=None if head is None else int(head),
        tail_seq=None if tail is None else int(tail),
        accepted=counter("accepted"),
        forwarded=counter("forwarded"),
        dropped={r: counter(f"dropped_{r}") for r in DROP_REASONS},
        peak_depth_messages=counter("peak_depth_messages"),
        peak_depth_bytes=counter("peak_depth_bytes"),
        last_seq=counter("last_seq"),
    )


def peek(path: str | Path, limit: int = 10) -> list[Stored]:
    """The ``limit`` oldest buffered messages (next to be forwarded), read-only."""
    with _readonly(path) as conn:
        cur = conn.execute(
            "SELECT seq, topic, payload, qos, retain, device, enqueued_at FROM messages ORDER BY seq LIMIT ?",
            (max(0, limit),),
        )
        return [Stored(int(s), t, bytes(p), int(q), bool(r), d, float(e)) for s, t, p, q, r, d, e in cur]


def drain_estimate(before: FileSnapshot, after: FileSnapshot) -> DrainEstimate | None:
    """Rates between two snapshots of the same file; None if they are not ordered in time
    or the file was replaced in between (counters went backwards)."""
    dt = after.taken_at - before.taken_at
    if dt <= 0 or after.accepted < before.accepted or after.forwarded < before.forwarded:
        return None
    forward = (after.forwarded - before.forwarded) / dt
    ingest = (after.accepted - before.accepted) / dt
    net = (before.depth_messages - after.depth_messages) / dt
    if after.depth_messages == 0:
        eta: float | None = 0.0
    elif net > 0:
        eta = after.depth_messages / net
    else:
        eta = None
    return DrainEstimate(interval_s=dt, forward_rate=forward, ingest_rate=ingest, net_drain_rate=net, eta_s=eta)
