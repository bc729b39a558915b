"""Dependencies point one way (STYLE.md): broker is the base; bridge and devices may import
broker but not each other; only edgemq (the CLI), simulations and tests import everything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("broker", "bridge", "devices", "edgemq", "simulations")
FORBIDDEN = {
    "broker": {"bridge", "devices", "edgemq", "simulations"},
    "bridge": {"devices", "edgemq", "simulations"},
    "devices": {"bridge", "edgemq", "simulations"},
    "edgemq": {"simulations"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = imported_packages(path) & FORBIDDEN[package]
        if wrong:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)


def test_the_check_can_fail(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("from bridge.store import Store\nimport devices.fleet\n")
    assert imported_packages(p) == {"bridge", "devices"}
