"""The store-and-forward buffer: a write-ahead log in one ordinary SQLite file.

How it works
------------
Every uplink record is appended as a row of ``messages`` under a ``seq`` that only
grows and is never reused, not even after deletes, reopen or a crash (see "Seq"
below); the forwarder reads rows in seq order (which is also per-device order)
and acknowledges them once upstream has them, which deletes them. One call of
:meth:`Buffer.append_many` is one transaction: that is the group commit.

Accounting: ``accepted == forwarded + sum(dropped) + depth`` always holds, in
memory and on disk. ``accepted`` counts every record offered to the buffer
(including those then refused), and every record leaves by exactly one door:
forwarded (acked), or dropped for a reason in :data:`DROP_REASONS`. The counters
live in the ``meta`` table and are written in the same transaction as the rows
they describe, so a crash cannot unbalance them.

Capacity: a record that does not fit (``max_messages``/``max_bytes``, size =
UTF-8 topic + payload) either evicts the oldest rows (``drop_oldest``, counted
``overflow``) or is refused (``reject_new``, counted ``rejected``). A record larger
than ``max_bytes`` can never fit and is refused whatever its policy. Records older
than ``ttl_s`` are deleted (``expired``) rather than read.

Storage errors: if SQLite fails during an append (disk full is SQLITE_FULL, also
I/O errors), the transaction is rolled back, the whole batch is counted
``error``, the :class:`AppendResult` carries the exception, and the buffer stays
usable. Nothing is raised for it: the caller decides what the failure means
(the async shell turns it into a ``StoreFull``/``StoreError`` for each waiter).
If even the counters cannot be written, they stay in memory and ride along with
the next transaction that succeeds (every transaction writes all counters).

Disk reserve: SQLite needs free disk to *delete* too (a delete writes WAL frames,
a checkpoint grows the main file), so a disk filled to the last byte by appends
would wedge the buffer: acks fail, the backlog never drains, the disk never
frees. Appends are therefore refused like a full disk (``error``, as SQLITE_FULL)
once the filesystem's free space plus SQLite's own free pages would drop below
``min_free_bytes`` (default 4 MiB); the WAL is checkpointed every 256 pages (1 MiB)
so that reserve always covers an ack and the checkpoint after it.

Seq: ``last_seq`` is committed with its rows. In the ``os``/``relaxed`` modes the
last commits may be lost on power loss, so seqs could be handed out twice; to
prevent that, seqs are issued only under a ``seq_reserved`` ceiling that is always
committed with a full fsync, a block at a time. A clean close lowers the ceiling
to ``last_seq``; after a crash, numbering resumes above the ceiling (a gap).

Time: ``enqueued_at`` never decreases (it is ``max(now, newest enqueued_at)``), so
the oldest rows are always a prefix in seq order and expiry deletes a prefix. A
wall clock stepped backwards makes new records look as old as the newest one.

What it does not do
-------------------
No networking, no clocks (every method that needs time takes ``now``), no
threads, no logging, no translation of sqlite3 exceptions into edgemq errors
(``bridge.store`` does that, once). One ``Buffer`` is used from one thread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from bridge.buffer_file import (
    COUNTERS,
    DROP_REASONS,
    SQLITE_FULL,
    SYNCHRONOUS,
    Durability,
    Unusable,
    connect,
    move_aside,
)
from broker.errors import StoreError

__all__ = [
    "DROP_REASONS",
    "AppendResult",
    "Buffer",
    "BufferStats",
    "Durability",
    "Overflow",
    "Record",
    "Stored",
]

Overflow = Literal["drop_oldest", "reject_new"]


#: Free disk kept back from appends so that acks and checkpoints can always run.
DEFAULT_MIN_FREE_BYTES = 4 * 1024 * 1024
#: How many seqs one fsynced reservation covers; the largest gap a crash can leave.
SEQ_BLOCK = 10_000

_CHUNK = 500  # ids per IN (...) list, well under SQLite's variable limit
_FULL_ACK_CHUNK = 32  # rows per ack transaction when the disk is full (see ``Buffer.ack``)


@dataclass(frozen=True, slots=True)
class Record:
    """One uplink message offered to the buffer."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    device: str = ""
    overflow: Overflow = "drop_oldest"

    @property
    def size(self) -> int:
        """Bytes counted against ``max_bytes``: UTF-8 topic plus payload."""
        return len(self.topic.encode()) + len(self.payload)


class Stored(NamedTuple):
    """One buffered message, as read back for forwarding.

    A named tuple, not a frozen dataclass: the drain builds one per message, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost ~2 µs of the ~3 µs per
    row that ``read`` took.
    """

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    device: str
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of one :meth:`Buffer.append_many` (one transaction).

    ``seqs[i]`` is the seq given to ``records[i]``, or ``None`` if it was refused
    (``rejected``) or the transaction failed (``error`` is then set and every
    entry is ``None``). A record may get a seq and be evicted by a later record of
    the same batch (``drop_oldest``); it was accepted and then dropped ``overflow``.
    """

    seqs: tuple[int | None, ...]
    evicted: int = 0
    expired: int = 0
    enqueued_at: float = 0.0  # the time stored with the batch's rows
    error: sqlite3.Error | None = None

    @property
    def stored(self) -> int:
        """How many records of the batch got a seq."""
        return sum(s is not None for s in self.seqs)


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A frozen snapshot of the buffer (trio style), peak included.

    Counters survive restarts; ``commits`` counts transactions since open.
    """

    depth_messages: int
    depth_bytes: int
    oldest_enqueued_at: float | None
    oldest_age_s: float | None
    head_seq: int | None
    tail_seq: int | None
    accepted: int
    forwarded: int
    dropped: dict[str, int]
    peak_depth_messages: int
    peak_depth_bytes: int
    last_seq: int
    max_messages: int
    max_bytes: int
    commits: int
    uplink_sent_high: int = 0
    uplink_resent: int = 0


class Buffer:
    """The synchronous write-ahead log. Create with :meth:`Buffer.open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        *,
        max_messages: int,
        max_bytes: int,
        ttl_s: float | None,
        durability: Durability,
        recovered_from: Path | None,
        min_free_bytes: int = 0,
    ) -> None:
        self._conn = conn
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.durability: Durability = durability
        #: Appends are refused (as disk full) below this much free disk; 0 disables the check.
        self.min_free_bytes = min_free_bytes
        #: Where a corrupt file found at open was moved to, if one was.
        self.recovered_from = recovered_from
        #: Transactions committed since open (group-commit efficiency).
        self.commits = 0
        self._closed = False
        self._c: dict[str, int] = {}
        #: The counters as last committed to ``meta``: a commit writes only those that changed.
        self._written: dict[str, int] = {}
        self._depth = 0
        self._bytes = 0
        self._last_enq = float("-inf")
        self._load()

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        max_messages: int,
        max_bytes: int,
        ttl_s: float | None = None,
        durability: Durability = "os",
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> Buffer:
        """Open (or create) the buffer file at ``path`` (``":memory:"`` for tests).

        A corrupt or foreign file is renamed ``<name>.corrupt-<n>`` (with its
        ``-wal``/``-shm``), never deleted, and a fresh buffer is started;
        ``recovered_from`` then names the moved file. Other sqlite3 errors (locked,
        unreadable) propagate.
        """
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be at least 1")
        if ttl_s is not None and ttl_s < 0:
            raise ValueError("ttl_s must be >= 0 or None")
        if durability not in SYNCHRONOUS:
            raise ValueError(f"durability must be one of {sorted(SYNCHRONOUS)}")
        if min_free_bytes < 0:
            raise ValueError("min_free_bytes must be >= 0")
        target = str(path)
        recovered: Path | None = None
        if target != ":memory:":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = connect(target, durability)
        except Unusable:
            recovered = move_aside(Path(target))
            conn = connect(target, durability)
        return cls(
            conn,
            target,
            max_messages=max_messages,
            max_bytes=max_bytes,
            ttl_s=ttl_s,
            durability=durability,
            recovered_from=recovered,
            min_free_bytes=0 if target == ":memory:" else min_free_bytes,
        )

    def _load(self) -> None:
        conn = self._conn
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._c = {k: int(meta.get(k, 0)) for k in COUNTERS}
        self._written = {k: int(v) for k, v in meta.items() if k in self._c}
        depth, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()
        tail = conn.execute("SELECT seq, enqueued_at FROM messages ORDER BY seq DESC LIMIT 1").fetchone()
        self._depth, self._bytes = int(depth), int(size)
        if tail is not None:
            self._last_enq = float(tail[1])
        c = self._c
        before = dict(c)
        # Resume above anything that may have been handed out before a crash.
        c["last_seq"] = max(c["last_seq"], c["seq_reserved"], int(tail[0]) if tail else 0)
        c["seq_reserved"] = max(c["seq_reserved"], c["last_seq"])
        # Rows added or removed behind our back: book them so the invariant holds.
        expected = c["accepted"] - c["forwarded"] - sum(c[f"dropped_{r}"] for r in DROP_REASONS)
        if self._depth < expected:
            c["dropped_external"] += expected - self._depth
        elif self._depth > expected:
            c["accepted"] += self._depth - expected
        c["peak_depth_messages"] = max(c["peak_depth_messages"], self._depth)
        c["peak_depth_bytes"] = max(c["peak_depth_bytes"], self._bytes)
        if c != before:
            with self._txn():
                pass

    # ------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        """One write transaction; all counters are written with it. On failure the
        in-memory state goes back to what it was and the exception propagates."""
        saved = (dict(self._c), self._depth, self._bytes, self._last_enq)
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            written = self._written
            changed = [(v, k) for k, v in self._c.items() if written.get(k) != v]
            if changed:
                conn.executemany("UPDATE meta SET value = ? WHERE key = ?", changed)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._c, self._depth, self._bytes, self._last_enq = saved
            raise
        self._written = dict(self._c)
        self.commits += 1

    @contextlib.contextmanager
    def _durable(self) -> Iterator[None]:
        """Run the enclosed transaction with a full fsync whatever the mode."""
        mode = SYNCHRONOUS[self.durability]
        if mode != "FULL":
            self._conn.execute("PRAGMA synchronous = FULL")
        try:
            yield
        finally:
            if mode != "FULL":
                self._conn.execute(f"PRAGMA synchronous = {mode}")

    def _reserve(self, n: int) -> None:
        need = self._c["last_seq"] + n
        if need <= self._c["seq_reserved"]:
            return
        with self._durable(), self._txn():
            self._c["seq_reserved"] = need + SEQ_BLOCK

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("buffer is closed", hint="open it again", path=self.path)

    # ------------------------------------------------------------------ append

    def append_many(self, records: Sequence[Record], now: float, acks: Iterable[int] = ()) -> AppendResult:
        """Append a batch in one transaction (the group commit); see the module doc.

        ``acks``: forwarded rows to delete in the same transaction (as :meth:`ack`), so a
        busy buffer commits once per batch, not once for the acks and once for the rows.
        If the transaction fails, they stay (and are forwarded again: at-least-once).
        """
        self._check_open()
        n = len(records)
        if n == 0:
            return AppendResult(())
        wanted = sorted(set(acks))
        try:
            self._check_free_disk(sum(r.size for r in records))
            self._reserve(n)
            with self._txn():
                if wanted:
                    self._ack_in_txn(wanted)
                expired = self._expire_in_txn(now)
                seqs, evicted = self._insert(records, now)
        except sqlite3.Error as exc:
            self._c["accepted"] += n
            self._c["dropped_error"] += n
            # Best effort; if this fails too, the next good transaction carries them.
            with contextlib.suppress(sqlite3.Error), self._txn():
                pass
            return AppendResult((None,) * n, error=exc)
        return AppendResult(tuple(seqs), evicted=evicted, expired=expired, enqueued_at=self._last_enq)

    def _insert(self, records: Sequence[Record], now: float) -> tuple[list[int | None], int]:
        c = self._c
        enq = max(now, self._last_enq)
        seqs: list[int | None] = []
        rows: list[tuple[int, str, bytes, int, int, str, float, int]] = []
        first_live = 0  # rows[:first_live] were evicted by later rows of this batch
        head = self._head_rows()
        evict_upto = 0
        overflow = rejected = 0
        for rec in records:
            size = rec.size
            if self._depth + 1 > self.max_messages or self._bytes + size > self.max_bytes:
                if size > self.max_bytes or rec.overflow == "reject_new":
                    rejected += 1
                    seqs.append(None)
                    continue
                while self._depth + 1 > self.max_messages or self._bytes + size > self.max_bytes:
                    old = next(head, None)
                    if old is not None:
                        evict_upto, old_size = old
                    else:
                        old_size = rows[first_live][7]
                        first_live += 1
                    self._depth -= 1
                    self._bytes -= old_size
                    overflow += 1
            seq = c["last_seq"] + 1
            c["last_seq"] = seq
            rows.append((seq, rec.topic, rec.payload, rec.qos, int(rec.retain), rec.device, enq, size))
            seqs.append(seq)
            self._depth += 1
            self._bytes += size
            c["peak_depth_messages"] = max(c["peak_depth_messages"], self._depth)
            c["peak_depth_bytes"] = max(c["peak_depth_bytes"], self._bytes)
        if evict_upto:
            self._conn.execute("DELETE FROM messages WHERE seq <= ?", (evict_upto,))
        if len(rows) > first_live:
            self._conn.executemany(
                "INSERT INTO messages (seq, topic, payload, qos, retain, device, enqueued_at, size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows[first_live:],
            )
            self._last_enq = enq
        c["accepted"] += len(records)
        c["dropped_overflow"] += overflow
        c["dropped_rejected"] += rejected
        return seqs, overflow

    def _check_free_disk(self, incoming: int) -> None:
        """Raise SQLITE_FULL if this batch would eat into the disk reserve (see module doc)."""
        if not self.min_free_bytes:
            return
        need = self.min_free_bytes + 2 * incoming  # rows go to the WAL, then to the main file
        st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        free = st.f_bavail * st.f_frsize
        if free >= need:
            return
        pages, page_size = (
            int(self._conn.execute(f"PRAGMA {name}").fetchone()[0]) for name in ("freelist_count", "page_size")
        )
        if free + pages * page_size < need:
            exc = sqlite3.OperationalError(
                f"database or disk is full: {free} bytes free on the buffer's filesystem,"
                f" {self.min_free_bytes} kept in reserve for acks"
            )
            exc.sqlite_errorcode = SQLITE_FULL
            exc.sqlite_errorname = "SQLITE_FULL"
            raise exc

    def _head_rows(self) -> Iterator[tuple[int, int]]:
        """Existing rows oldest first, as (seq, size), fetched lazily in chunks."""
        after = 0
        while True:
            chunk = self._conn.execute(
                "SELECT seq, size FROM messages WHERE seq > ? ORDER BY seq LIMIT ?", (after, _CHUNK)
            ).fetchall()
            if not chunk:
                return
            yield from ((int(s), int(z)) for s, z in chunk)
            after = int(chunk[-1][0])

    # ------------------------------------------------------------- read / ack

    def read(self, after_seq: int, limit: int, now: float) -> list[Stored]:
        """Up to ``limit`` messages with seq > ``after_seq``, in seq order; expires first."""
        self._check_open()
        self.expire(now)
        cur = self._conn.execute(
            "SELECT seq, topic, payload, qos, retain, device, enqueued_at FROM messages"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [Stored(s, t, bytes(p), q, bool(r), d, e) for s, t, p, q, r, d, e in cur]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete forwarded rows (any order) and count them; unknown seqs are ignored.

        Returns how many rows were actually removed. sqlite3 errors propagate after
        rollback (the rows stay and will be forwarded again: at-least-once).
        """
        self._check_open()
        wanted = sorted(set(seqs))
        if not wanted:
            return 0
        try:
            with self._txn():
                return self._ack_in_txn(wanted)
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF != SQLITE_FULL or len(wanted) <= _FULL_ACK_CHUNK:
                raise
        # The disk is full and one transaction deleting this many rows needs more WAL than
        # there is room for (hundreds of rows of 8 KB did not fit in the 4 MiB reserve): the
        # acks would fail forever and nothing would ever be freed. Small transactions fit,
        # and the WAL is checkpointed and reused between them.
        removed = 0
        for i in range(0, len(wanted), _FULL_ACK_CHUNK):
            with self._txn():
                removed += self._ack_in_txn(wanted[i : i + _FULL_ACK_CHUNK])
        return removed

    def _ack_in_txn(self, wanted: Sequence[int]) -> int:
        removed = 0
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            cur = self._conn.execute(f"DELETE FROM messages WHERE seq IN ({marks}) RETURNING size", chunk)
            for (size,) in cur.fetchall():
                removed += 1
                self._bytes -= int(size)
        self._depth -= removed
        self._c["forwarded"] += removed
        return removed

    def note_uplink(self, sent_high: int, resent: int) -> None:
        """Record the uplink's counters; written with the next transaction (no commit of its own)."""
        c = self._c
        c["uplink_sent_high"] = max(c["uplink_sent_high"], sent_high)
        c["uplink_resent"] = max(c["uplink_resent"], resent)

    # ------------------------------------------------------------------ expiry

    def expire(self, now: float) -> int:
        """Delete and count (``expired``) every message at least ``ttl_s`` old."""
        self._check_open()
        if not self._head_expired(now):
            return 0
        with self._txn():
            return self._expire_in_txn(now)

    def _head_expired(self, now: float) -> bool:
        """Whether the oldest row has reached ``ttl_s``: one indexed lookup, no scan."""
        if self.ttl_s is None:
            return False
        head = self._conn.execute("SELECT enqueued_at FROM messages ORDER BY seq LIMIT 1").fetchone()
        return head is not None and float(head[0]) <= now - self.ttl_s

    def _expire_in_txn(self, now: float) -> int:
        # Rows are enqueued in seq order with non-decreasing times, so the expired rows are a
        # prefix: probe the head first and scan only when it has expired (every group commit
        # calls this, so the common case must cost one lookup, not a chunk of rows).
        if self.ttl_s is None or not self._head_expired(now):
            return 0
        cutoff = now - self.ttl_s
        count = freed = upto = 0
        after = 0
        while True:
            chunk = self._conn.execute(
                "SELECT seq, size, enqueued_at FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, _CHUNK),
            ).fetchall()
            stop = not chunk
            for seq, size, enq in chunk:
                if float(enq) > cutoff:
                    stop = True
                    break
                count, freed, upto = count + 1, freed + int(size), int(seq)
            if stop:
                break
            after = int(chunk[-1][0])
        if count:
            self._conn.execute("DELETE FROM messages WHERE seq <= ?", (upto,))
            self._depth -= count
            self._bytes -= freed
            self._c["dropped_expired"] += count
        return count

    # ------------------------------------------------------- stats / lifecycle

    def statistics(self, now: float) -> BufferStats:
        """A frozen snapshot; ``oldest_age_s`` is measured at ``now``."""
        self._check_open()
        c = self._c
        head = self._conn.execute("SELECT seq, enqueued_at FROM messages ORDER BY seq LIMIT 1").fetchone()
        tail = self._conn.execute("SELECT seq FROM messages ORDER BY seq DESC LIMIT 1").fetchone()
        oldest = float(head[1]) if head else None
        return BufferStats(
            depth_messages=self._depth,
            depth_bytes=self._bytes,
            oldest_enqueued_at=oldest,
            oldest_age_s=None if oldest is None else max(0.0, now - oldest),
            head_seq=int(head[0]) if head else None,
            tail_seq=int(tail[0]) if tail else None,
            accepted=c["accepted"],
            forwarded=c["forwarded"],
            dropped={r: c[f"dropped_{r}"] for r in DROP_REASONS},
            peak_depth_messages=c["peak_depth_messages"],
            peak_depth_bytes=c["peak_depth_bytes"],
            last_seq=c["last_seq"],
            max_messages=self.max_messages,
            max_bytes=self.max_bytes,
            commits=self.commits,
            uplink_sent_high=c["uplink_sent_high"],
            uplink_resent=c["uplink_resent"],
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self) -> None:
        """Flush counters durably, lower the seq ceiling (no gap next time), close."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._durable(), self._txn():
                self._c["seq_reserved"] = self._c["last_seq"]
        except sqlite3.Error:
            pass  # the next open resumes above the old ceiling: a gap, never a reuse
        finally:
            self._conn.close()
