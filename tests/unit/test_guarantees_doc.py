"""docs/guarantees.md cites tests; every cited test must exist, every drop reason must appear."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from bridge.buffer import DROP_REASONS

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "guarantees.md").read_text()


def test_every_cited_test_exists() -> None:
    """`tests/x.py::name`, or `::name` for another test in the last file named before it."""
    current: Path | None = None
    checked = 0
    for m in re.finditer(r"`(tests/[\w/]+\.py)?(?:::([\w*]+))?`", DOC):
        path, name = m.groups()
        if path:
            current = ROOT / path
            assert current.exists(), path
        if not name:
            continue
        assert current is not None, name
        tree = ast.parse(current.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        pattern = re.compile("^" + name.replace("*", r"\w*") + "$")
        assert any(pattern.match(n) for n in names), f"{current.name}::{name}"
        checked += 1
    assert checked > 15


def test_every_drop_reason_and_mode_has_a_row() -> None:
    for word in ("overflow", "expired", "rejected", "error", "`fsync`", "`os`", "`relaxed`", "standalone bridge"):
        assert word in DOC, word
    assert set(DROP_REASONS) - {"external"} <= {r for r in DROP_REASONS if r in DOC}
