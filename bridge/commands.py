"""The command queue: downlink commands for devices that are not here yet, on disk, with a time-to-live.

How it works
------------
A command the site routes to this broker while its device is offline
(``broker.ownership.route_command`` answers ``QUEUE``: this broker is the first alive
one of the device's preference list, normally its owner) becomes a row of
``commands`` in its own SQLite file beside the uplink buffer. Rows carry an
``expires_at`` computed when they are queued (``now + ttl``). When the device is back
and subscribed, :meth:`CommandQueue.pending` hands its rows over in seq order
(which is the order the cloud sent them) and :meth:`CommandQueue.delivered`
deletes them once the broker has them: at-least-once between this file and the
broker, and a crash in between delivers a command twice rather than never.

Expired rows are never handed over: :meth:`pending` skips them and
:meth:`expire` deletes them, counted ``expired``. A queue full at ``max_commands``
drops the oldest row (counted ``overflow``): the newest command for a device is
the one most worth keeping. Accounting, kept in ``meta`` in the same transaction
as the rows: ``queued == delivered + expired + overflow + depth``.

Commands are few (operators', not telemetry), so every call is one small
transaction on the caller's thread; the file is an ordinary SQLite database
(``sqlite-utils`` opens it).

What it does not do
-------------------
No routing decision (``broker.ownership.route_command``), no broker calls (the
``bridge.downlink`` shell does both), no clock (every method takes ``now``), no
threads, no logging.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlite_utils

from broker.errors import StoreError

__all__ = ["Command", "CommandQueue", "CommandStats"]

SCHEMA_VERSION = 1
_COUNTERS = ("queued", "delivered", "expired", "overflow")
_SYNCHRONOUS = {"fsync": "FULL", "os": "NORMAL", "relaxed": "OFF"}


@dataclass(frozen=True, slots=True)
class Command:
    seq: int
    device: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    enqueued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class CommandStats:
    """A frozen snapshot; counters survive restarts."""

    depth: int
    devices: int
    oldest_age_s: float | None
    queued: int
    delivered: int
    expired: int
    overflow: int
    max_commands: int


class CommandQueue:
    """The on-disk queue. Create with :meth:`open`; one instance per file, one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, max_commands: int) -> None:
        self._conn = conn
        self.path = path
        self.max_commands = max_commands

    @classmethod
    def open(
        cls, path: Path, *, max_commands: int = 100_000, durability: Literal["fsync", "os", "relaxed"] = "os"
    ) -> CommandQueue:
        if max_commands < 1:
            raise ValueError("max_commands must be >= 1")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[durability]}")
            _ensure_schema(conn, path)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the command queue {path}: {exc}",
                path=str(path),
                hint="move the file aside; queued commands in it are lost",
            ) from exc
        return cls(conn, path, max_commands)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------ operations

    def put(self, device: str, topic: str, payload: bytes, qos: int, retain: bool, *, now: float, ttl_s: float) -> int:
        """Queue one command; return its seq. Evicts the oldest rows if the queue is full."""
        with self._txn() as c:
            depth = c.execute("SELECT count(*) FROM commands").fetchone()[0]
            excess = depth + 1 - self.max_commands
            if excess > 0:
                c.execute(
                    "DELETE FROM commands WHERE seq IN (SELECT seq FROM commands ORDER BY seq LIMIT ?)", (excess,)
                )
                _bump(c, "overflow", excess)
            cur = c.execute(
                "INSERT INTO commands (device, topic, payload, qos, retain, enqueued_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device, topic, payload, qos, int(retain), now, now + ttl_s),
            )
            _bump(c, "queued", 1)
            seq = cur.lastrowid
        assert seq is not None
        return int(seq)

    def pending(self, device: str, *, now: float) -> list[Command]:
        """The device's unexpired commands, oldest first (nothing is removed)."""
        rows = self._conn.execute(
            "SELECT seq, device, topic, payload, qos, retain, enqueued_at, expires_at FROM commands "
            "WHERE device = ? AND expires_at > ? ORDER BY seq",
            (device, now),
        ).fetchall()
        return [Command(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6], r[7]) for r in rows]

    def devices(self) -> list[str]:
        """Devices with queued commands."""
        return [r[0] for r in self._conn.execute("SELECT DISTINCT device FROM commands ORDER BY device")]

    def delivered(self, seqs: Iterable[int]) -> int:
        """Remove commands the broker now has; return how many were still queued."""
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._txn() as c:
            n = c.executemany("DELETE FROM commands WHERE seq = ?", [(s,) for s in seqs]).rowcount
            _bump(c, "delivered", n)
        return int(n)

    def expire(self, *, now: float) -> int:
        """Delete every expired command; return how many."""
        with self._txn() as c:
            n = c.execute("DELETE FROM commands WHERE expires_at <= ?", (now,)).rowcount
            if n:
                _bump(c, "expired", n)
        return int(n)

    def statistics(self, *, now: float) -> CommandStats:
        depth, devices, oldest = self._conn.execute(
            "SELECT count(*), count(DISTINCT device), min(enqueued_at) FROM commands"
        ).fetchone()
        counters = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        return CommandStats(
            depth=int(depth),
            devices=int(devices),
            oldest_age_s=None if oldest is None else max(0.0, now - float(oldest)),
            queued=counters.get("queued", 0),
            delivered=counters.get("delivered", 0),
            expired=counters.get("expired", 0),
            overflow=counters.get("overflow", 0),
            max_commands=self.max_commands,
        )

    # --------------------------------------------------------------- helpers

    def _txn(self) -> _Txn:
        return _Txn(self._conn)


class _Txn:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _bump(conn: sqlite3.Connection, key: str, n: int) -> None:
    conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    db = sqlite_utils.Database(conn)
    tables = set(db.table_names()) - {"sqlite_sequence"}
    if tables and not {"commands", "meta"} <= tables:
        raise StoreError(
            f"{path} is not an edgemq command queue (tables: {sorted(tables)})",
            path=str(path),
            hint="point the broker's run directory elsewhere or move the file aside",
        )
    if not tables:
        # AUTOINCREMENT: a seq is never reused, so a stale seq can never delete a newer command.
        conn.execute(
            "CREATE TABLE commands (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, "
            "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, "
            "enqueued_at REAL NOT NULL, expires_at REAL NOT NULL) STRICT"
        )
        conn.execute("CREATE INDEX commands_device ON commands (device, seq)")
        db.table("meta").create({"key": str, "value": int}, pk="key", not_null=["value"], strict=True)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise StoreError(
            f"command queue schema {row[0]} is newer than this edgemq ({SCHEMA_VERSION})",
            path=str(path),
            hint="run a newer edgemq",
        )
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
        [("schema_version", SCHEMA_VERSION), *((k, 0) for k in _COUNTERS)],
    )
    conn.execute("COMMIT")
