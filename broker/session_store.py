"""Persistent sessions that outlive the broker process: their subscriptions, on disk.

How it works
------------
A rebooted gateway must not forget its devices: a client that connected with
clean session off and subscribed expects, after the broker restarts, to reconnect
with "session present" and find its subscriptions (and, for commands, what was
queued for it: ``bridge.commands`` keeps those). amqtt 0.12.1 keeps sessions in
memory only (``Broker._sessions``, ``Broker._subscriptions``).

``SessionStore`` is one small SQLite file: a row per (client id, topic filter, QoS)
of every persistent session, and per session the identity it authenticated with
(user, role, site, how), so access control treats the restored session as it did
before the restart (deliveries to it are checked against that identity until the
client reconnects and authenticates again). ``EdgeBroker`` calls :meth:`SessionStore.save` with
a session's whole subscription set after each SUBSCRIBE and UNSUBSCRIBE it
handles, :meth:`SessionStore.forget` when a session is deleted (a clean-session
CONNECT), and :meth:`SessionStore.load` once at start-up to recreate the sessions,
disconnected, with their subscriptions. Subscriptions change rarely, so each call
is one transaction on the caller's thread.

What it does not do: keep messages (amqtt's per-session queues stay in memory;
commands are durable in ``bridge.commands``), wills, or clean sessions; no
networking, no clock.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from broker.errors import StoreError

__all__ = ["SessionStore"]


class SessionStore:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> SessionStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and tables != {"subscriptions", "sessions"}:
                raise StoreError(
                    f"{path} is not an edgemq session file (tables: {sorted(tables)})",
                    path=str(path),
                    hint="move the file aside",
                )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS subscriptions (client_id TEXT NOT NULL, filter TEXT NOT NULL, "
                "qos INTEGER NOT NULL, PRIMARY KEY (client_id, filter)) STRICT"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, principal TEXT) STRICT")
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the session file {path}: {exc}",
                path=str(path),
                hint="move the file aside; persistent sessions in it are forgotten",
            ) from exc
        return cls(conn, path)

    def save(
        self, client_id: str, subscriptions: Iterable[tuple[str, int]], principal: dict[str, Any] | None = None
    ) -> None:
        """Make ``client_id``'s stored subscriptions exactly ``subscriptions``, with its identity."""
        rows = [(client_id, f, q) for f, q in subscriptions]
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute("DELETE FROM subscriptions WHERE client_id = ?", (client_id,))
            self._conn.executemany("INSERT INTO subscriptions (client_id, filter, qos) VALUES (?, ?, ?)", rows)
            self._conn.execute(
                "INSERT OR REPLACE INTO sessions (client_id, principal) VALUES (?, ?)",
                (client_id, None if principal is None else json.dumps(principal, sort_keys=True)),
            )
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def forget(self, client_id: str) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("DELETE FROM subscriptions WHERE client_id = ?", (client_id,))
        self._conn.execute("DELETE FROM sessions WHERE client_id = ?", (client_id,))
        self._conn.execute("COMMIT")

    def load(self) -> dict[str, tuple[list[tuple[str, int]], dict[str, Any] | None]]:
        """Every stored session: client id -> ([(filter, qos)] in filter order, identity or None)."""
        out: dict[str, tuple[list[tuple[str, int]], dict[str, Any] | None]] = {}
        for cid, principal in self._conn.execute("SELECT client_id, principal FROM sessions ORDER BY client_id"):
            out[cid] = ([], None if principal is None else json.loads(principal))
        rows = self._conn.execute("SELECT client_id, filter, qos FROM subscriptions ORDER BY client_id, filter")
        for cid, f, q in rows:
            out.setdefault(cid, ([], None))[0].append((f, int(q)))
        return out

    def close(self) -> None:
        self._conn.close()
