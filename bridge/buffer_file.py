"""The buffer's SQLite file: connecting (pragmas, integrity check), the schema, moving a bad file aside.

Used by :mod:`bridge.buffer` only; the durability modes and counters are described there.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import sqlite_utils

from broker.errors import StoreError

__all__ = [
    "COUNTERS",
    "DROP_REASONS",
    "SCHEMA_VERSION",
    "SQLITE_FULL",
    "SYNCHRONOUS",
    "Durability",
    "Unusable",
    "connect",
    "move_aside",
]

Durability = Literal["fsync", "os", "relaxed"]

#: Why a record left the buffer without being forwarded.
#: ``external``: rows found missing at open (deleted by hand); counted so the books balance.
DROP_REASONS: tuple[str, ...] = ("overflow", "expired", "rejected", "error", "external")

SCHEMA_VERSION = 1
WAL_AUTOCHECKPOINT_PAGES = 256
SYNCHRONOUS: dict[str, str] = {"fsync": "FULL", "os": "NORMAL", "relaxed": "OFF"}
COUNTERS: tuple[str, ...] = (
    "accepted",
    "forwarded",
    *(f"dropped_{r}" for r in DROP_REASONS),
    "peak_depth_messages",
    "peak_depth_bytes",
    "last_seq",
    "seq_reserved",
    # The uplink's, kept here so a restart (even after kill -9) knows what it re-sends:
    # the highest seq ever handed to a cloud connection, and how many were sent again.
    "uplink_sent_high",
    "uplink_resent",
)
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_NOTADB = 26


class Unusable(Exception):
    """The file is not a usable buffer (corrupt, not SQLite, or someone else's schema)."""


# ------------------------------------------------------------------ file level


def connect(target: str, durability: Durability) -> sqlite3.Connection:
    """Connect, set pragmas, check integrity and create/verify the schema."""
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[durability]}")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise Unusable(f"quick_check: {check[:3]}")
        ensure_schema(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if (exc.sqlite_errorcode & 0xFF) in (SQLITE_CORRUPT, SQLITE_NOTADB):
            raise Unusable(str(exc)) from exc
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(conn)
    tables = set(db.table_names())
    ours = {"messages", "meta"}
    if tables and not ours <= tables:
        raise Unusable(f"not an edgemq buffer (tables: {sorted(tables)})")
    if not tables:
        db.table("messages").create(
            {
                "seq": int,
                "topic": str,
                "payload": bytes,
                "qos": int,
                "retain": int,
                "device": str,
                "enqueued_at": float,
                "size": int,
            },
            pk="seq",
            not_null=["topic", "payload", "qos", "retain", "device", "enqueued_at", "size"],
            strict=True,
        )
        db.table("meta").create({"key": str, "value": int}, pk="key", not_null=["value"], strict=True)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise StoreError(
            f"buffer schema {row[0]} is newer than this edgemq ({SCHEMA_VERSION})",
            hint="run a newer edgemq or point it at another file",
            path=conn.execute("PRAGMA database_list").fetchone()[2],
        )
    # Idempotent: also repairs a crash between CREATE TABLE and this insert.
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
        [("schema_version", SCHEMA_VERSION), *((k, 0) for k in COUNTERS)],
    )
    conn.execute("COMMIT")


def move_aside(path: Path) -> Path:
    """Rename a bad file (and its -wal/-shm) to ``<name>.corrupt-<n>``; return the new path."""
    n = 1
    while path.with_name(f"{path.name}.corrupt-{n}").exists():
        n += 1
    dest = path.with_name(f"{path.name}.corrupt-{n}")
    path.rename(dest)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(dest.with_name(dest.name + suffix))
    return dest
