"""The uplink's re-send counters live in the buffer's meta table and survive a reopen (and kill -9).

They are written with the next ack transaction, never on their own; the file is what a
restarted uplink resumes from (``Store.uplink_counters``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bridge.buffer import Buffer, Record
from bridge.store import Store


def test_uplink_counters_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"

    async def first() -> None:
        async with Store.open(path, max_messages=100, max_bytes=10**6) as s:
            for i in range(5):
                await s.append(Record(f"telemetry/p/d/{i}", b"x"))
            assert s.uplink_counters() == (0, 0)
            s.note_uplink(5, 2)
            await s.read(0, 10)  # no ack yet: nothing written for the note alone
            s.ack([1, 2])
            await s.settled()  # the ack's transaction carries the note
            assert s.uplink_counters() == (5, 2)

    asyncio.run(first())
    with sqlite3.connect(path) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert (meta["uplink_sent_high"], meta["uplink_resent"]) == (5, 2)

    async def second() -> None:
        async with Store.open(path, max_messages=100, max_bytes=10**6) as s:
            assert s.uplink_counters() == (5, 2)

    asyncio.run(second())


def test_note_never_lowers_the_counters() -> None:
    buf = Buffer.open(":memory:", max_messages=10, max_bytes=10**6)
    buf.note_uplink(10, 4)
    buf.note_uplink(3, 1)  # a stale note (e.g. reordered) cannot undo counted re-sends
    stats = buf.statistics(0.0)
    assert (stats.uplink_sent_high, stats.uplink_resent) == (10, 4)
    buf.close()
