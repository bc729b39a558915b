"""The synchronous buffer core: order, seqs, capacity, expiry, acks, accounting, files."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from bridge.buffer import DROP_REASONS, Buffer, BufferStats, Record

BIG = 10**9


def rec(i: int = 0, *, size: int = 10, device: str = "d1", policy: str = "drop_oldest") -> Record:
    return Record(
        topic=f"telemetry/s/{device}/t",
        payload=bytes([i % 256]) * size,
        device=device,
        overflow=policy,  # type: ignore[arg-type]  # tests pass both literals
    )


def balanced(s: BufferStats) -> bool:
    return s.accepted == s.forwarded + sum(s.dropped.values()) + s.depth_messages


def open_buf(path: Path | str, **kw: Any) -> Buffer:
    kw.setdefault("max_messages", BIG)
    kw.setdefault("max_bytes", BIG)
    return Buffer.open(path, **kw)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buf.db"


@pytest.fixture
def buf(path: Path) -> Iterator[Buffer]:
    b = open_buf(path)
    yield b
    b.close()


@pytest.fixture
def mem() -> Iterator[Buffer]:
    b = open_buf(":memory:")
    yield b
    b.close()


def test_in_memory_buffer_round_trip(mem: Buffer) -> None:
    r = mem.append_many([rec(1), rec(2)], now=0.0)
    assert r.seqs == (1, 2)
    assert [m.payload[0] for m in mem.read(0, 10, now=0.0)] == [1, 2]


def test_read_returns_seq_order_and_fields(buf: Buffer) -> None:
    records = [rec(i, device=f"d{i % 3}") for i in range(20)]
    res = buf.append_many(records, now=5.0)
    got = buf.read(0, 100, now=5.0)
    assert [m.seq for m in got] == list(res.seqs) == list(range(1, 21))
    for r, m in zip(records, got, strict=True):
        assert (m.topic, m.payload, m.qos, m.retain, m.device, m.enqueued_at) == (
            r.topic,
            r.payload,
            r.qos,
            r.retain,
            r.device,
            5.0,
        )
    assert [m.seq for m in buf.read(15, 3, now=5.0)] == [16, 17, 18]


def test_seq_never_reused_after_delete_and_reopen(path: Path) -> None:
    b = open_buf(path)
    b.append_many([rec(i) for i in range(5)], now=0.0)
    b.ack([1, 2, 3, 4, 5])
    b.close()
    b = open_buf(path)
    assert b.append_many([rec()], now=0.0).seqs == (6,)  # clean close: no gap
    b.close()


def test_seq_not_reused_after_crash(path: Path, tmp_path: Path) -> None:
    b = open_buf(path, durability="relaxed")
    b.append_many([rec(i) for i in range(5)], now=0.0)
    # A crash snapshot: copy the file and its WAL while the buffer is open.
    crash = tmp_path / "crash.db"
    shutil.copy(path, crash)
    shutil.copy(path.with_name(path.name + "-wal"), crash.with_name(crash.name + "-wal"))
    b.close()
    c = open_buf(crash)
    assert [m.seq for m in c.read(0, 10, now=0.0)] == [1, 2, 3, 4, 5]
    (seq,) = c.append_many([rec()], now=0.0).seqs
    assert seq is not None and seq > 5  # resumes above the fsynced ceiling
    assert balanced(c.statistics(0.0))
    c.close()


def test_overflow_drop_oldest_by_messages() -> None:
    b = open_buf(":memory:", max_messages=3)
    res = b.append_many([rec(i) for i in range(5)], now=0.0)
    assert res.seqs == (1, 2, 3, 4, 5) and res.evicted == 2
    assert [m.seq for m in b.read(0, 10, 0.0)] == [3, 4, 5]
    s = b.statistics(0.0)
    assert s.dropped["overflow"] == 2 and s.depth_messages == 3 and s.peak_depth_messages == 3
    assert balanced(s)


def test_overflow_drop_oldest_by_bytes() -> None:
    one = rec().size
    b = open_buf(":memory:", max_bytes=one * 3 + 10)
    b.append_many([rec(i) for i in range(3)], now=0.0)
    b.append_many([rec(9, size=20)], now=0.0)  # needs 10 more bytes: evicts one
    assert [m.seq for m in b.read(0, 10, 0.0)] == [2, 3, 4]
    s = b.statistics(0.0)
    assert s.dropped["overflow"] == 1 and s.depth_bytes == one * 2 + rec(size=20).size
    assert balanced(s)


def test_overflow_reject_new_by_messages_and_bytes() -> None:
    b = open_buf(":memory:", max_messages=2)
    res = b.append_many([rec(i, policy="reject_new") for i in range(4)], now=0.0)
    assert res.seqs == (1, 2, None, None)
    assert [m.seq for m in b.read(0, 10, 0.0)] == [1, 2]
    one = rec().size
    c = open_buf(":memory:", max_bytes=one * 2)
    res = c.append_many([rec(0, policy="reject_new"), rec(1, size=11, policy="reject_new")], now=0.0)
    assert res.seqs == (1, None)
    for x, refused in ((b, 2), (c, 1)):
        s = x.statistics(0.0)
        assert s.dropped["rejected"] == refused and s.dropped["overflow"] == 0 and balanced(s)


def test_record_larger_than_capacity_is_rejected_without_evicting() -> None:
    b = open_buf(":memory:", max_bytes=100)
    b.append_many([rec(1)], now=0.0)
    res = b.append_many([rec(2, size=500)], now=0.0)
    assert res.seqs == (None,)
    assert [m.seq for m in b.read(0, 10, 0.0)] == [1]
    assert b.statistics(0.0).dropped["rejected"] == 1


def test_rejected_seq_numbers_are_not_consumed() -> None:
    b = open_buf(":memory:", max_messages=1)
    b.append_many([rec(0, policy="reject_new"), rec(1, policy="reject_new")], now=0.0)
    b.ack([1])
    assert b.append_many([rec(2)], now=0.0).seqs == (2,)


def test_ttl_expires_on_read_and_is_counted() -> None:
    b = open_buf(":memory:", ttl_s=10.0)
    b.append_many([rec(1)], now=0.0)
    b.append_many([rec(2)], now=5.0)
    assert [m.seq for m in b.read(0, 10, now=9.9)] == [1, 2]
    assert [m.seq for m in b.read(0, 10, now=10.0)] == [2]
    s = b.statistics(10.0)
    assert s.dropped["expired"] == 1 and s.oldest_enqueued_at == 5.0 and s.oldest_age_s == 5.0
    assert b.expire(now=100.0) == 1
    assert b.statistics(100.0).depth_messages == 0 and balanced(b.statistics(100.0))


def test_enqueued_at_never_goes_backwards() -> None:
    b = open_buf(":memory:", ttl_s=10.0)
    b.append_many([rec(1)], now=100.0)
    b.append_many([rec(2)], now=50.0)  # clock stepped back
    assert [m.enqueued_at for m in b.read(0, 10, now=100.0)] == [100.0, 100.0]


def test_ack_out_of_order_and_idempotent(buf: Buffer) -> None:
    buf.append_many([rec(i) for i in range(6)], now=0.0)
    assert buf.ack([5, 2, 4]) == 3
    assert [m.seq for m in buf.read(0, 10, 0.0)] == [1, 3, 6]
    assert buf.ack([2, 5, 5, 77]) == 0  # already gone or unknown: no-op
    s = buf.statistics(0.0)
    assert s.forwarded == 3 and s.depth_messages == 3 and balanced(s)


def test_ack_of_evicted_row_does_not_double_count() -> None:
    b = open_buf(":memory:", max_messages=2)
    b.append_many([rec(i) for i in range(3)], now=0.0)  # seq 1 evicted
    assert b.ack([1, 2]) == 1
    s = b.statistics(0.0)
    assert (s.forwarded, s.dropped["overflow"]) == (1, 1) and balanced(s)


def test_accounting_survives_reopen(path: Path) -> None:
    b = open_buf(path, max_messages=4, ttl_s=5.0)
    b.append_many([rec(i) for i in range(6)], now=0.0)
    b.append_many([rec(i, policy="reject_new") for i in range(2)], now=1.0)
    b.ack([3, 4])
    b.expire(now=5.0)
    before = b.statistics(6.0)
    b.close()
    b = open_buf(path, max_messages=4, ttl_s=5.0)
    after = b.statistics(6.0)
    assert balanced(before) and balanced(after)
    for f in ("accepted", "forwarded", "dropped", "depth_messages", "depth_bytes", "last_seq"):
        assert getattr(before, f) == getattr(after, f), f
    assert after.peak_depth_messages == 4
    b.close()


def test_rows_deleted_by_hand_are_booked_as_external(path: Path) -> None:
    b = open_buf(path)
    b.append_many([rec(i) for i in range(3)], now=0.0)
    b.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM messages WHERE seq = 2")
    b = open_buf(path)
    s = b.statistics(0.0)
    assert s.dropped["external"] == 1 and balanced(s)
    b.close()


@pytest.mark.parametrize(("mode", "expected"), [("fsync", 2), ("os", 1), ("relaxed", 0)])
def test_durability_pragmas_are_set(path: Path, mode: str, expected: int) -> None:
    b = open_buf(path, durability=mode)
    assert b._conn.execute("PRAGMA synchronous").fetchone()[0] == expected
    assert b._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    b.append_many([rec()] * 3, now=0.0)  # the fsynced seq reservation restores the mode after
    assert b._conn.execute("PRAGMA synchronous").fetchone()[0] == expected
    b.close()


@pytest.mark.parametrize(
    "content",
    [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["garbage", "bad-header"],
)
def test_corrupt_file_is_moved_aside_and_reported(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    b = open_buf(path)
    assert b.recovered_from == path.with_name("buf.db.corrupt-1")
    assert b.recovered_from.read_bytes() == content  # kept, never deleted
    assert b.append_many([rec()], now=0.0).seqs == (1,)
    b.close()
    path.write_bytes(content)
    b = open_buf(path)
    assert b.recovered_from == path.with_name("buf.db.corrupt-2")
    b.close()


def test_corrupt_pages_are_detected(path: Path) -> None:
    b = open_buf(path)
    b.append_many([rec(i, size=1000) for i in range(50)], now=0.0)
    b.close()
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 2 + 200] = b"\x07" * 200  # scribble over a b-tree page
    path.write_bytes(bytes(data))
    b = open_buf(path)
    assert b.recovered_from is not None
    assert b.statistics(0.0).depth_messages == 0
    b.close()


def test_foreign_sqlite_database_is_moved_aside(path: Path) -> None:
    sqlite_utils.Database(path).table("dogs").insert({"name": "Cleo"})
    b = open_buf(path)
    assert b.recovered_from is not None
    assert sqlite_utils.Database(b.recovered_from)["dogs"].count == 1
    b.close()


def _fill_until_full(b: Buffer) -> int:
    """Append 4 KiB records until SQLite reports SQLITE_FULL; return the batch size that failed."""
    for i in range(10_000):
        res = b.append_many([rec(i, size=4096) for _ in range(4)], now=float(i))
        if res.error is not None:
            assert res.seqs == (None,) * 4
            assert isinstance(res.error, sqlite3.OperationalError)
            assert res.error.sqlite_errorname == "SQLITE_FULL"
            return 4
    raise AssertionError("never filled")


def test_disk_full_rolls_back_counts_error_and_stays_usable(path: Path) -> None:
    b = open_buf(path)
    b.append_many([rec()], now=0.0)
    pages = b._conn.execute("PRAGMA page_count").fetchone()[0]
    b._conn.execute(f"PRAGMA max_page_count = {pages + 20}")
    before_fill = b.statistics(0.0)
    failed = _fill_until_full(b)
    s = b.statistics(0.0)
    assert s.dropped["error"] == failed and balanced(s)
    assert s.accepted > before_fill.accepted
    # The rows on disk match what the counters say.
    assert b._conn.execute("SELECT count(*) FROM messages").fetchone()[0] == s.depth_messages
    # Draining frees room; a small record fits again.
    b.ack(m.seq for m in b.read(0, 1000, 0.0))
    assert b.append_many([rec()], now=0.0).error is None
    b._conn.execute("PRAGMA max_page_count = 1073741823")
    assert b.append_many([rec(size=4096)] * 10, now=0.0).error is None
    s = b.statistics(0.0)
    b.close()
    b = open_buf(path)
    again = b.statistics(0.0)
    assert balanced(again) and again.dropped == s.dropped and again.accepted == s.accepted
    b.close()


def test_file_is_plain_sqlite_utils_database(buf: Buffer, path: Path) -> None:
    buf.append_many([rec(1), rec(2)], now=3.0)
    db = sqlite_utils.Database(path)
    assert {"messages", "meta"} <= set(db.table_names())
    rows = list(db["messages"].rows)
    assert [r["seq"] for r in rows] == [1, 2] and rows[0]["enqueued_at"] == 3.0
    meta = {r["key"]: r["value"] for r in db["meta"].rows}
    assert meta["accepted"] == 2 and meta["last_seq"] == 2 and meta["schema_version"] == 1
    assert set(DROP_REASONS) == {k.removeprefix("dropped_") for k in meta if k.startswith("dropped_")}


def test_statistics_is_a_frozen_snapshot(buf: Buffer) -> None:
    s = buf.statistics(0.0)
    buf.append_many([rec()], now=0.0)
    assert s.depth_messages == 0 and s.oldest_age_s is None and s.head_seq is None
    with pytest.raises(AttributeError):
        s.depth_messages = 3  # type: ignore[misc]


def test_closed_buffer_refuses_use(path: Path) -> None:
    from broker.errors import StoreError

    b = open_buf(path)
    b.close()
    b.close()  # idempotent
    with pytest.raises(StoreError):
        b.append_many([rec()], now=0.0)


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        open_buf(":memory:", max_messages=0)
    with pytest.raises(ValueError):
        open_buf(":memory:", ttl_s=-1)


def test_every_drop_reason_and_durability_mode_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "buffer.md").read_text()
    for name in (*DROP_REASONS, "fsync", "os", "relaxed", "drop_oldest", "reject_new"):
        assert f"`{name}`" in doc, name


def test_disk_reserve_refuses_appends_but_lets_acks_free_space(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the reserve appends fail as SQLITE_FULL (counted 'error'); acks still run, and the
    pages they free inside the file count as free space again."""
    import os as _os

    from bridge.store import store_error
    from broker.errors import StoreFull

    b = open_buf(path, min_free_bytes=64 * 1024)
    now = 1000.0
    payload = b"p" * 3000
    b.append_many([Record("telemetry/s/d/t", payload) for _ in range(100)], now)
    real = _os.statvfs
    free = [0]

    class Vfs:
        def __init__(self, st: Any) -> None:
            self.f_frsize = st.f_frsize
            self.f_bavail = free[0] // st.f_frsize

    monkeypatch.setattr("bridge.buffer.os.statvfs", lambda p: Vfs(real(p)))
    res = b.append_many([Record("telemetry/s/d/t", payload)], now)
    assert res.error is not None and isinstance(store_error(res.error, str(path)), StoreFull)
    st = b.statistics(now)
    assert st.dropped["error"] == 1 and st.depth_messages == 100 and balanced(st)
    assert b.ack(range(1, 61)) == 60  # a full disk does not stop the drain
    res = b.append_many([Record("telemetry/s/d/t", payload)], now)
    assert res.error is None and res.seqs == (101,)  # freed pages inside the file are used again
    assert balanced(b.statistics(now))
    b.close()
