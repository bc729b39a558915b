"""edgemq ring owner|show|diff, through typer's CliRunner on a tiny app (plain output: not a terminal)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from typer.testing import CliRunner

from broker.config import BrokerConfig, ClusterConfig, SiteConfig
from broker.ring import Ring
from edgemq.ring_cmd import ring_app

app = typer.Typer()
app.add_typer(ring_app, name="ring")
runner = CliRunner()


def write(tmp: Path, name: str, weights: dict[str, float], site: str = "plant-1") -> Path:
    cfg = ClusterConfig(
        run_dir=tmp / "run",
        sites=[
            SiteConfig(
                id=site,
                brokers=[BrokerConfig(id=b, port=21000 + i, weight=w) for i, (b, w) in enumerate(weights.items())],
            )
        ],
    )
    lines = [f'run_dir = "{cfg.run_dir}"', "[[sites]]", f'id = "{site}"']
    for b in cfg.sites[0].brokers:
        lines += ["[[sites.brokers]]", f'id = "{b.id}"', f"port = {b.port}", f"weight = {b.weight}"]
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_owner_prints_owner_and_preference_list(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", {"a1": 1, "a2": 1, "a3": 1})
    res = runner.invoke(app, ["ring", "owner", "dev-0001", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    pref = Ring.uniform(["a1", "a2", "a3"]).preference("plant-1/dev-0001", 3)
    assert f"plant-1/dev-0001: owner {pref[0]}" in res.output
    rows = [line.split() for line in res.output.splitlines()[2:]]
    assert [r[1] for r in rows] == pref
    assert rows[0][-1] == "owner" and rows[1][-1] == "failover"
    assert "127.0.0.1:2100" in res.output


def test_owner_takes_site_slash_device_and_n(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", {"a1": 1, "a2": 1, "a3": 1})
    res = runner.invoke(app, ["ring", "owner", "plant-1/pump-7", "-c", str(cfg), "-n", "1"])
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) == 3


def test_owner_of_an_unknown_site_is_one_clear_error(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", {"a1": 1})
    res = runner.invoke(app, ["ring", "owner", "nowhere/dev-1", "-c", str(cfg)])
    assert res.exit_code == 2 and "no site 'nowhere'" in res.output


def test_show_prints_weight_share_sample_and_connected(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", {"a1": 1, "a2": 2, "a3": 1})
    stats = tmp_path / "run" / "stats"
    stats.mkdir(parents=True)
    (stats / "plant-1.a1.json").write_text(json.dumps({"clients": 17, "ts": time.time()}))
    (stats / "plant-1.a3.json").write_text(json.dumps({"clients": 4, "ts": time.time() - 3600}))
    res = runner.invoke(app, ["ring", "show", "-c", str(cfg), "--devices", "400"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split() for line in res.output.splitlines()[2:]}
    assert rows["a1"][2:5] == ["1", "25.0%", "100.0"]
    assert rows["a2"][2:5] == ["2", "50.0%", "200.0"]
    assert rows["a1"][6] == "17" and rows["a2"][6] == "-" and "stale" in " ".join(rows["a3"])
    assert sum(int(r[5]) for r in rows.values()) == 400


def test_show_without_devices_has_no_sample_columns(tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", {"a1": 1, "a2": 1})
    res = runner.invoke(app, ["ring", "show", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "expected" not in res.output and "connected" in res.output


def test_diff_adding_a_broker_moves_devices_only_to_it(tmp_path: Path) -> None:
    old = write(tmp_path, "old.toml", {"a1": 1, "a2": 1, "a3": 1})
    new = write(tmp_path, "new.toml", {"a1": 1, "a2": 1, "a3": 1, "a4": 1})
    res = runner.invoke(app, ["ring", "diff", str(old), str(new), "--devices", "2000", "--limit", "5"])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    moved = int(first.split(": ")[1].split()[0])
    assert 400 <= moved <= 600, first  # about 1/4
    totals = [
        line.split()
        for line in res.output.splitlines()
        if line.split()[-1:] and line.split()[0] in {"a1", "a2", "a3"} and len(line.split()) == 3
    ]
    assert {t[1] for t in totals} == {"a4"}
    assert sum(int(t[2]) for t in totals) == moved
    assert "(first 5)" in res.output


def test_diff_with_a_device_list(tmp_path: Path) -> None:
    old = write(tmp_path, "old.toml", {"a1": 1, "a2": 1, "a3": 1})
    new = write(tmp_path, "new.toml", {"a1": 1, "a2": 1})
    ring = Ring.uniform(["a1", "a2", "a3"])
    on_a3 = [d for d in (f"pump-{i}" for i in range(100)) if ring.owner(f"plant-1/{d}") == "a3"][:3]
    elsewhere = [d for d in (f"pump-{i}" for i in range(100)) if ring.owner(f"plant-1/{d}") != "a3"][:2]
    lst = tmp_path / "devices.txt"
    lst.write_text("# devices\n" + "\n".join([*on_a3, "plant-1/" + elsewhere[0], elsewhere[1], "other/x"]) + "\n\n")
    res = runner.invoke(app, ["ring", "diff", str(old), str(new), "--device-list", str(lst)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == "site plant-1: 3 of 5 devices would move (60.0%)"
    for d in on_a3:
        assert any(line.split()[:2] == [d, "a3"] for line in res.output.splitlines())


def test_diff_with_no_change_moves_nothing(tmp_path: Path) -> None:
    old = write(tmp_path, "old.toml", {"a1": 1, "a2": 1})
    res = runner.invoke(app, ["ring", "diff", str(old), str(old), "-n", "100"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "site plant-1: 0 of 100 devices would move (0.0%)"


def test_diff_of_a_bad_file_is_one_clear_error(tmp_path: Path) -> None:
    old = write(tmp_path, "old.toml", {"a1": 1})
    bad = tmp_path / "bad.toml"
    bad.write_text("sites = 3\n")
    res = runner.invoke(app, ["ring", "diff", str(old), str(bad)])
    assert res.exit_code == 2 and "error" in res.output
