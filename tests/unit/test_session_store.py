"""The persistent-session file: save, forget, load across reopen, identity kept, foreign files refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker.errors import StoreError
from broker.session_store import SessionStore


def test_sessions_round_trip_through_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    s = SessionStore.open(path)
    who = {"name": "dev-1", "role": "device", "site": "p", "via": "password"}
    s.save("dev-1", [("commands/p/dev-1/#", 1), ("a/b", 0)], who)
    s.save("dev-2", [("x", 1)])
    s.save("dev-2", [("y", 1)])  # replaces, never appends
    s.save("dev-3", [])  # a persistent session with no subscription is still a session
    s.close()
    s = SessionStore.open(path)
    assert s.load() == {
        "dev-1": ([("a/b", 0), ("commands/p/dev-1/#", 1)], who),
        "dev-2": ([("y", 1)], None),
        "dev-3": ([], None),
    }
    s.forget("dev-1")
    assert set(s.load()) == {"dev-2", "dev-3"}


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE messages (x)")
    with pytest.raises(StoreError, match="not an edgemq session file"):
        SessionStore.open(path)
