"""The async shell: group commit, commit-before-resolve, waking, closing, error mapping."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bridge.buffer import Record
from bridge.store import Store, store_error
from broker.errors import StoreCorrupt, StoreError, StoreFull
from broker.fastpath import AckQueue, Outbox

T = TypeVar("T")
BIG = 10**9


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def rec(i: int = 0, device: str = "d1", policy: str = "drop_oldest") -> Record:
    return Record(f"telemetry/s/{device}/t", b"%d" % i, device=device, overflow=policy)  # type: ignore[arg-type]


def store(path: Path, **kw: Any) -> Store:
    kw.setdefault("max_messages", BIG)
    kw.setdefault("max_bytes", BIG)
    return Store.open(path, **kw)


def with_store(path: Path, body: Callable[[Store], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        async with store(path, **kw) as s:
            return await body(s)

    return run(main())


def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    async def body(s: Store) -> None:
        before = s.statistics().commits
        seqs = await asyncio.gather(*(s.append(rec(i)) for i in range(500)))
        assert sorted(seqs) == list(range(1, 501))
        commits = s.statistics().commits - before
        assert commits < 50, commits  # far fewer transactions than appends

    with_store(tmp_path / "b.db", body)


def test_max_batch_caps_a_group(tmp_path: Path) -> None:
    async def body(s: Store) -> None:
        await asyncio.gather(*(s.append(rec(i)) for i in range(100)))
        assert s.statistics().commits >= 100 // 10

    with_store(tmp_path / "b.db", body, max_batch=10, commit_interval_s=0.05)


def test_append_resolves_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "b.db"

    async def body(s: Store) -> None:
        for i in range(3):
            seq = await s.append(rec(i))
            with sqlite3.connect(path) as fresh:  # another connection sees it: committed
                row = fresh.execute("SELECT payload FROM messages WHERE seq = ?", (seq,)).fetchone()
            assert row == (b"%d" % i,)

    with_store(path, body, durability="fsync")


def test_read_ack_in_order_through_the_queue(tmp_path: Path) -> None:
    async def body(s: Store) -> None:
        seqs = [await s.append(rec(i)) for i in range(6)]
        got = await s.read(0, 4)
        assert [m.seq for m in got] == seqs[:4]
        s.ack([got[2].seq, got[0].seq])  # out of order
        s.ack([got[0].seq])  # again: no double count
        assert [m.seq for m in await s.read(0, 10)] == [seqs[1], *seqs[3:]]
        await s.settled()  # acks are committed within ack_delay_s; the barrier waits for them
        st = s.statistics()
        assert st.forwarded == 2 and st.depth_messages == 4
        assert st.accepted == st.forwarded + sum(st.dropped.values()) + st.depth_messages

    with_store(tmp_path / "b.db", body)


def test_wait_for_data_wakes_on_commit_and_times_out(tmp_path: Path) -> None:
    async def body(s: Store) -> None:
        assert await s.wait_for_data(0, timeout=0.01) is False
        waiter = asyncio.create_task(s.wait_for_data(0, timeout=10))
        await asyncio.sleep(0)
        assert not waiter.done()
        seq = await s.append(rec())
        assert await waiter is True
        assert await s.wait_for_data(seq - 1, timeout=0) is True
        assert await s.wait_for_data(seq, timeout=0.01) is False
        s.ack([seq])
        await s.settled()  # barrier: the ack is applied
        assert await s.wait_for_data(0, timeout=0.01) is False  # nothing buffered any more

    with_store(tmp_path / "b.db", body)


def test_close_flushes_queued_appends(tmp_path: Path) -> None:
    path = tmp_path / "b.db"

    async def main() -> list[int]:
        s = store(path, commit_interval_s=0.5)
        await s.start()
        tasks = [asyncio.create_task(s.append(rec(i))) for i in range(50)]
        await asyncio.sleep(0)  # let them queue
        await s.aclose()
        return [await t for t in tasks]

    seqs = run(main())
    assert sorted(seqs) == list(range(1, 51))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (50,)


def test_use_after_close_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        s = store(tmp_path / "b.db")
        async with s:
            pass
        await s.aclose()  # idempotent
        with pytest.raises(StoreError):
            await s.append(rec())

    run(main())


def test_reject_new_raises_store_full_and_counts(tmp_path: Path) -> None:
    async def body(s: Store) -> None:
        await s.append(rec(0, policy="reject_new"))
        with pytest.raises(StoreFull) as info:
            await s.append(rec(1, policy="reject_new"))
        assert info.value.recoverable and info.value.fields["reason"] == "rejected"
        assert s.statistics().dropped["rejected"] == 1

    with_store(tmp_path / "b.db", body, max_messages=1)


def test_statistics_age_uses_the_clock(tmp_path: Path) -> None:
    now = [100.0]

    async def body(s: Store) -> None:
        await s.append(rec())
        now[0] = 130.0
        st = s.statistics()
        assert st.oldest_enqueued_at == 100.0 and st.oldest_age_s == 30.0

    with_store(tmp_path / "b.db", body, clock=lambda: now[0])


def test_ttl_applies_through_the_shell(tmp_path: Path) -> None:
    now = [0.0]

    async def body(s: Store) -> None:
        await s.append(rec())
        now[0] = 61.0
        assert await s.read(0, 10) == []
        assert s.statistics().dropped["expired"] == 1

    with_store(tmp_path / "b.db", body, ttl_s=60.0, clock=lambda: now[0])


def test_corrupt_file_reported_by_the_store(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"not sqlite" * 50)

    async def body(s: Store) -> Path | None:
        await s.append(rec())
        return s.recovered_from

    assert with_store(path, body) == tmp_path / "b.db.corrupt-1"


def test_open_failure_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")

    async def main() -> None:
        with pytest.raises(StoreError):
            async with store(blocker / "b.db"):
                pass

    run(main())


def test_sqlite_errors_are_mapped_once() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(sqlite3.OperationalError) as full:
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    mapped = store_error(full.value, "b.db")
    assert isinstance(mapped, StoreFull) and mapped.recoverable and mapped.__cause__ is full.value
    corrupt = sqlite3.DatabaseError("file is not a database")
    corrupt.sqlite_errorcode = 26
    assert isinstance(store_error(corrupt, "b.db"), StoreCorrupt)
    assert type(store_error(sqlite3.OperationalError("x"), "b.db")) is StoreError
    same = StoreFull("already ours")
    assert store_error(same, "b.db") is same


def test_idle_expiry_runs_without_reads_or_appends(tmp_path: Path) -> None:
    now = [0.0]

    async def body(s: Store) -> None:
        await s.append(rec())
        await s.append(rec(1))
        assert s.statistics().depth_messages == 2
        now[0] = 61.0  # nothing reads or appends from here on: only the ticker can expire
        for _ in range(200):
            if s.statistics().depth_messages == 0:
                break
            await asyncio.sleep(0.01)
        stats = s.statistics()
        assert (stats.depth_messages, stats.dropped["expired"], stats.oldest_age_s) == (0, 2, None)

    with_store(tmp_path / "b.db", body, ttl_s=60.0, clock=lambda: now[0], expire_interval_s=0.02)


def test_expire_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Store.open(tmp_path / "b.db", max_messages=1, max_bytes=1, expire_interval_s=0)


def test_appends_of_one_loop_turn_are_one_hand_off_and_one_commit(tmp_path: Path) -> None:
    async def body(s: Store) -> None:
        await s.append(rec(0))  # the first append also reserves a block of seqs (its own commit)
        before = s.statistics().commits
        futs = [s.submit(rec(i)) for i in range(50)]  # queued in call order, same turn
        seqs = await asyncio.gather(*futs)
        assert list(seqs) == list(range(2, 52))
        assert s.statistics().commits - before == 1

    with_store(tmp_path / "b.db", body)


def test_acks_gathered_in_a_turn_are_seen_by_the_next_read(tmp_path: Path) -> None:
    async def body(s: Store) -> None:
        seqs = [await s.append(rec(i)) for i in range(5)]
        s.ack([seqs[3]])
        s.ack([seqs[0]])  # out of order; neither handed over yet when read() is called
        got = await s.read(0, 10)
        assert [m.seq for m in got] == [seqs[1], seqs[2], seqs[4]]  # from memory, acks already out
        await s.settled()
        assert s.statistics().forwarded == 2

    with_store(tmp_path / "b.db", body)


def test_cancelling_one_append_does_not_cancel_the_others_of_its_batch(tmp_path: Path) -> None:
    async def body(s: Store) -> None:
        first = asyncio.create_task(s.append(rec(0)))
        second = asyncio.create_task(s.append(rec(1)))
        await asyncio.sleep(0)  # both queued in the same turn
        first.cancel()
        assert await second == 2
        assert s.statistics().depth_messages == 2  # the cancelled append's record stays stored

    with_store(tmp_path / "b.db", body)


def test_a_commits_appenders_hear_of_it_before_its_readers(tmp_path: Path) -> None:
    """The broker releases a commit's PUBACKs (callbacks on the append futures, then one
    ``call_soon``) before the uplink, woken by the same commit, forwards its rows: the store
    wakes readers a turn after it settles the appends (``_settle_and_wake``)."""

    async def body(s: Store) -> list[str]:
        order: list[str] = []
        acks = AckQueue(Outbox(lambda data: order.append("puback"), lambda: False), lambda exc: None)

        async def uplink() -> None:
            assert await s.wait_for_data(0, 5.0)
            order.append(f"forward {len(await s.read(0, 10))}")

        task = asyncio.create_task(uplink())
        await asyncio.sleep(0)  # the uplink waits for data
        for pid in (1, 2, 3):
            acks.add(pid, s.submit(rec(pid)))
        await task
        return order

    assert with_store(tmp_path / "b.db", body) == ["puback", "forward 3"]


def test_timed_out_waits_leave_nothing_behind(tmp_path: Path) -> None:
    """An idle uplink waits with a timeout over and over: no waiter may pile up in between."""

    async def body(s: Store) -> int:
        for _ in range(20):
            assert not await s.wait_for_data(0, 0.001)
        return len(s._waiters)

    assert with_store(tmp_path / "b.db", body) == 0
