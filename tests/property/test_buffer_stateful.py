"""The real buffer and a tiny deque model take the same random steps and must agree.

Steps: append batches (both overflow policies, sizes around the capacity), read
from any position, ack any seqs (out of order, duplicates, unknown), expire, a
clock that sometimes steps back, storage failures (SQLite's page limit and an
authorizer that refuses writes, so even the counters cannot be saved), and
close-and-reopen. After every step: the same rows, the same counters, and
accepted == forwarded + dropped + depth.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bridge.buffer import DROP_REASONS, Buffer, Record

Row = tuple[int, str, bytes, str, float]  # seq, topic, payload, device, enqueued_at


@dataclass
class Model:
    max_messages: int
    max_bytes: int
    ttl_s: float | None
    rows: deque[Row] = field(default_factory=deque)
    accepted: int = 0
    forwarded: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    last_seq: int = 0
    last_enq: float = float("-inf")
    peak_messages: int = 0
    peak_bytes: int = 0

    @staticmethod
    def size(row: Row) -> int:
        return len(row[1].encode()) + len(row[2])

    @property
    def nbytes(self) -> int:
        return sum(map(self.size, self.rows))

    def expire(self, now: float) -> None:
        if self.ttl_s is None:
            return
        while self.rows and self.rows[0][4] <= now - self.ttl_s:
            self.rows.popleft()
            self.dropped["expired"] += 1

    def append(self, records: list[Record], now: float) -> list[int | None]:
        if not records:
            return []  # an empty batch is not a transaction: nothing expires
        self.expire(now)
        enq = max(now, self.last_enq)
        seqs: list[int | None] = []
        for r in records:
            self.accepted += 1
            full = len(self.rows) + 1 > self.max_messages or self.nbytes + r.size > self.max_bytes
            if full and (r.size > self.max_bytes or r.overflow == "reject_new"):
                self.dropped["rejected"] += 1
                seqs.append(None)
                continue
            while len(self.rows) + 1 > self.max_messages or self.nbytes + r.size > self.max_bytes:
                self.rows.popleft()
                self.dropped["overflow"] += 1
            self.last_seq += 1
            self.rows.append((self.last_seq, r.topic, r.payload, r.device, enq))
            self.last_enq = enq
            seqs.append(self.last_seq)
            self.peak_messages = max(self.peak_messages, len(self.rows))
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
        return seqs

    def fail(self, n: int) -> None:
        self.accepted += n
        self.dropped["error"] += n

    def ack(self, seqs: list[int]) -> None:
        gone = set(seqs)
        before = len(self.rows)
        self.rows = deque(r for r in self.rows if r[0] not in gone)
        self.forwarded += before - len(self.rows)

    def reopen(self) -> None:
        self.last_enq = self.rows[-1][4] if self.rows else float("-inf")


records_st = st.lists(
    st.builds(
        lambda dev, n, pol: Record(f"t/{dev}", bytes([n % 256]) * n, device=dev, overflow=pol),
        st.sampled_from("abc"),
        st.integers(0, 60),
        st.sampled_from(["drop_oldest", "reject_new"]),
    ),
    max_size=6,
)
dt_st = st.integers(-3, 8)


class BufferMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="edgemq-buf-"))
        self.now = 1000.0

    @initialize(
        max_messages=st.integers(1, 8),
        max_bytes=st.sampled_from([20, 70, 200, 50_000]),
        ttl_s=st.one_of(st.none(), st.integers(0, 20).map(float)),
    )
    def start(self, max_messages: int, max_bytes: int, ttl_s: float | None) -> None:
        self.model = Model(max_messages, max_bytes, ttl_s)
        self.buf = self._open()

    def _open(self) -> Buffer:
        m = self.model
        return Buffer.open(
            self.dir / "buf.db",
            max_messages=m.max_messages,
            max_bytes=m.max_bytes,
            ttl_s=m.ttl_s,
            durability="relaxed",
        )

    def _tick(self, dt: int) -> float:
        self.now += dt
        return self.now

    @rule(records=records_st, dt=dt_st)
    def append(self, records: list[Record], dt: int) -> None:
        now = self._tick(dt)
        res = self.buf.append_many(records, now)
        assert res.error is None
        assert list(res.seqs) == self.model.append(records, now)

    @rule(n=st.integers(1, 4), size=st.integers(500, 3000), extra_pages=st.integers(0, 2), dt=dt_st)
    def append_with_page_limit(self, n: int, size: int, extra_pages: int, dt: int) -> None:
        now = self._tick(dt)
        conn = self.buf._conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")
        records = [Record("t/big", b"x" * size, device="a") for _ in range(n)]
        try:
            res = self.buf.append_many(records, now)
        finally:
            conn.execute("PRAGMA max_page_count = 1073741823")
        if res.error is not None:
            event("disk full")
            assert res.seqs == (None,) * n
            self.model.fail(n)
        else:
            assert list(res.seqs) == self.model.append(records, now)

    @rule(records=records_st.filter(bool), dt=dt_st)
    def append_while_writes_refused(self, records: list[Record], dt: int) -> None:
        now = self._tick(dt)
        conn = self.buf._conn
        conn.set_authorizer(
            lambda action, *_: (
                sqlite3.SQLITE_DENY
                if action in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
                else sqlite3.SQLITE_OK
            )
        )
        try:
            res = self.buf.append_many(records, now)
        finally:
            conn.set_authorizer(None)
        assert res.error is not None and res.seqs == (None,) * len(records)
        self.model.fail(len(records))

    @rule(data=st.data(), limit=st.integers(1, 10), dt=dt_st)
    def read(self, data: st.DataObject, limit: int, dt: int) -> None:
        now = self._tick(dt)
        after = data.draw(st.integers(0, self.model.last_seq + 1))
        got = self.buf.read(after, limit, now)
        self.model.expire(now)
        want = [r for r in self.model.rows if r[0] > after][:limit]
        assert [(m.seq, m.topic, m.payload, m.device, m.enqueued_at) for m in got] == want

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        present = [r[0] for r in self.model.rows]
        chosen = data.draw(st.lists(st.sampled_from(present), unique=False) if present else st.just([]))
        stray = data.draw(st.lists(st.integers(0, self.model.last_seq + 3), max_size=3))
        seqs = data.draw(st.permutations(chosen + stray))
        self.buf.ack(seqs)
        self.model.ack(seqs)

    @rule(dt=dt_st)
    def expire(self, dt: int) -> None:
        now = self._tick(dt)
        self.buf.expire(now)
        self.model.expire(now)

    @rule()
    def close_and_reopen(self) -> None:
        self.buf.close()
        self.buf = self._open()
        assert self.buf.recovered_from is None
        self.model.reopen()

    @precondition(lambda self: hasattr(self, "buf"))
    @invariant()
    def agrees_with_model(self) -> None:
        m = self.model
        s = self.buf.statistics(self.now)
        rows = self.buf._conn.execute(
            "SELECT seq, topic, payload, device, enqueued_at FROM messages ORDER BY seq"
        ).fetchall()
        assert [tuple(r) for r in rows] == list(m.rows)
        assert (s.depth_messages, s.depth_bytes) == (len(m.rows), m.nbytes)
        assert (s.accepted, s.forwarded, s.dropped, s.last_seq) == (m.accepted, m.forwarded, m.dropped, m.last_seq)
        assert (s.peak_depth_messages, s.peak_depth_bytes) == (m.peak_messages, m.peak_bytes)
        assert s.accepted == s.forwarded + sum(s.dropped.values()) + s.depth_messages
        assert s.head_seq == (m.rows[0][0] if m.rows else None)

    def teardown(self) -> None:
        if hasattr(self, "buf"):
            self.buf.close()
        shutil.rmtree(self.dir, ignore_errors=True)


BufferMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=40, deadline=None)
TestBufferStateful = BufferMachine.TestCase
