"""Docs cannot fall behind: every command is in the README, every cluster-file option in
cluster.example.toml (sqlite-utils style: a test fails when something is undocumented)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main

from broker.config import ClusterConfig
from edgemq.cli import app

ROOT = Path(__file__).resolve().parents[2]


def command_paths(group: Any, prefix: str = "edgemq") -> list[str]:
    paths = []
    if hasattr(group, "commands"):  # a group (typer vendors its own click classes)
        for name, cmd in group.commands.items():
            paths += command_paths(cmd, f"{prefix} {name}")
    else:
        paths.append(prefix)
    return paths


def documented(path: str, text: str) -> bool:
    """``edgemq a b`` is documented if it appears whole, or as ``edgemq a x / b / y`` on one line."""
    if path in text:
        return True
    group, _, leaf = path.rpartition(" ")
    return any(
        group in line and re.search(rf"\b{re.escape(leaf)}\b", line.split(group, 1)[1])
        for line in text.splitlines()
        if group in line
    )


def test_every_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    paths = command_paths(typer.main.get_command(app))
    assert len(paths) >= 8
    missing = [p for p in paths if not documented(p, readme)]
    assert not missing, f"commands missing from README.md: {missing}"


def test_the_command_check_can_fail() -> None:
    assert not documented("edgemq cluster explode", "edgemq cluster up / down")
    assert documented("edgemq cluster down", "`edgemq cluster up / down / status`")


def field_paths(model: type, prefix: str = "") -> list[str]:
    """Leaf options of the cluster file (sections themselves are not options)."""
    out = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        nested = [
            a
            for a in (*getattr(field.annotation, "__args__", ()), field.annotation)
            if isinstance(a, type) and hasattr(a, "model_fields")
        ]
        if not nested:
            out.append(prefix + name)
        for arg in nested:
            out += field_paths(arg, prefix + name + ".")
    return out


def test_every_cluster_option_is_in_the_example_file() -> None:
    example = (ROOT / "cluster.example.toml").read_text()
    missing = [
        p for p in field_paths(ClusterConfig) if not re.search(r"\b" + re.escape(p.split(".")[-1]) + r"\b", example)
    ]
    assert not missing, f"options missing from cluster.example.toml: {missing}"


def test_every_cluster_option_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p for p in field_paths(ClusterConfig) if f"`{p.split('.')[-1]}`" not in readme]
    assert not missing, f"options missing from the README's cluster-file table: {missing}"
