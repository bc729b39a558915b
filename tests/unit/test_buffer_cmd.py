"""`edgemq buffer stats|peek` on real buffer files: read-only, node running or stopped."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from bridge.buffer import Buffer, Record
from bridge.inspection import drain_estimate, peek, read_snapshot
from broker.config import ClusterConfig
from broker.errors import StoreError
from edgemq.buffer_cmd import broker_rows, buffer_app, site_total
from edgemq.node import buffer_path, stats_path

app = typer.Typer()
app.add_typer(buffer_app, name="buffer")
runner = CliRunner()


def cluster(tmp_path: Path) -> tuple[ClusterConfig, Path]:
    cfg = ClusterConfig.model_validate(
        {
            "run_dir": str(tmp_path / "run"),
            "sites": [
                {"id": "s1", "brokers": [{"id": "a1", "port": 1883}, {"id": "a2", "port": 1884}]},
                {"id": "s2", "brokers": [{"id": "b1", "port": 1885}]},
            ],
        }
    )
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'run_dir = "{tmp_path / "run"}"\n'
        '[[sites]]\nid = "s1"\n[[sites.brokers]]\nid = "a1"\nport = 1883\n[[sites.brokers]]\nid = "a2"\nport = 1884\n'
        '[[sites]]\nid = "s2"\n[[sites.brokers]]\nid = "b1"\nport = 1885\n'
    )
    return cfg, path


def rec(i: int, device: str = "d1") -> Record:
    return Record(f"telemetry/s1/{device}/t", b'{"seq": %d}' % i, device=f"s1/{device}")


def fill(cfg: ClusterConfig, site: str, broker: str, **kw: Any) -> Buffer:
    """A real buffer file with 10 accepted, 3 forwarded, 2 dropped overflow, 5 buffered."""
    kw.setdefault("max_messages", 5)
    buf = Buffer.open(buffer_path(cfg, site, broker), max_bytes=10**6, **kw)
    now = time.time() - 30
    buf.append_many([rec(i) for i in range(5)], now)
    buf.ack([1, 2, 3])
    buf.append_many([rec(i) for i in range(5, 10)], now + 10)  # 5 rows max: seqs 4 and 5 evicted
    return buf


def write_stats(cfg: ClusterConfig, name: str, **extra: Any) -> None:
    path = stats_path(cfg, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"ts": time.time(), "uplink": {"state": "backoff", "inflight": 4}, "buffer": {}} | extra
    path.write_text(json.dumps(data))


def test_snapshot_reads_counters_and_depth_without_writing(tmp_path: Path) -> None:
    cfg, _ = cluster(tmp_path)
    buf = fill(cfg, "s1", "a1")  # still open: a live writer
    path = buffer_path(cfg, "s1", "a1")
    before = path.stat().st_mtime_ns
    snap = read_snapshot(path, time.time())
    assert (snap.depth_messages, snap.accepted, snap.forwarded, snap.dropped["overflow"]) == (5, 10, 3, 2)
    assert snap.balanced and snap.head_seq == 6 and snap.tail_seq == 10
    assert snap.oldest_age_s is not None and 15 < snap.oldest_age_s < 60
    assert path.stat().st_mtime_ns == before
    assert [m.seq for m in peek(path, 3)] == [6, 7, 8]
    buf.close()
    assert read_snapshot(path, time.time()).depth_messages == 5  # stopped: same answer


def test_missing_or_foreign_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no buffer file"):
        read_snapshot(tmp_path / "nope.sqlite3", 0.0)
    import sqlite3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table x (a)").connection.close()
    with pytest.raises(StoreError, match="not an edgemq buffer"):
        read_snapshot(other, 0.0)
    assert not (tmp_path / "nope.sqlite3").exists()  # read-only: never created


def test_drain_estimate_from_two_reads(tmp_path: Path) -> None:
    cfg, _ = cluster(tmp_path)
    buf = fill(cfg, "s1", "a1")
    path = buffer_path(cfg, "s1", "a1")
    a = read_snapshot(path, 100.0)
    buf.ack([6, 7])
    b = read_snapshot(path, 102.0)
    est = drain_estimate(a, b)
    assert est is not None
    assert (est.forward_rate, est.ingest_rate, est.net_drain_rate, est.eta_s) == (1.0, 0.0, 1.0, 3.0)
    buf.append_many([rec(20), rec(21), rec(22), rec(23)], time.time())
    c = read_snapshot(path, 104.0)
    est2 = drain_estimate(b, c)
    assert est2 is not None and est2.eta_s is None  # growing: not draining
    assert drain_estimate(c, b) is None  # out of order
    buf.close()


def test_rows_and_site_total(tmp_path: Path) -> None:
    cfg, _ = cluster(tmp_path)
    fill(cfg, "s1", "a1").close()
    fill(cfg, "s1", "a2", max_messages=100).close()
    write_stats(cfg, "s1.a1")
    write_stats(cfg, "s1.a2", stopped=True)
    rows = broker_rows(cfg, [("s1", "a1"), ("s1", "a2")], 0.0)
    assert [(r["ref"], r["state"], r["inflight"]) for r in rows] == [
        ("s1/a1", "backoff", 4),
        ("s1/a2", "stopped", None),
    ]
    assert rows[1]["depth_messages"] == 7 and rows[1]["dropped"]["overflow"] == 0
    total = site_total("s1", rows)
    assert total["depth_messages"] == 12 and total["dropped"]["overflow"] == 2 and total["inflight"] == 4
    assert total["state"] == "1/2 running"


def test_stats_cli_plain_and_json(tmp_path: Path) -> None:
    cfg, config = cluster(tmp_path)
    fill(cfg, "s1", "a1").close()
    write_stats(cfg, "s1.a1")
    res = runner.invoke(app, ["buffer", "stats", "--config", str(config), "--site", "s1", "--interval", "0.05"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:4] == ["broker", "state", "depth", "bytes"]
    a1 = next(x for x in lines if x.startswith("s1/a1"))
    assert "backoff" in a1 and "overflow 2" in a1 and "stalled" in a1  # a backlog, nothing moving
    assert "no buffer" in next(x for x in lines if x.startswith("s1/a2"))
    assert lines[-1].startswith("s1 (total)") and "1/2 running" in lines[-1]
    assert "\x1b[" not in res.output  # plain off a terminal

    res = runner.invoke(app, ["buffer", "stats", "--config", str(config), "--json", "--interval", "0"])
    data = json.loads(res.output)
    assert [r["ref"] for r in data["brokers"]] == ["s1/a1", "s1/a2", "s2/b1"]
    assert [s["site"] for s in data["sites"]] == ["s1", "s2"]
    a1j = data["brokers"][0]
    assert a1j["depth_messages"] == 5 and a1j["inflight"] == 4 and a1j["balanced"] is True

    res = runner.invoke(app, ["buffer", "stats", "--config", str(config), "--broker", "s1/a1", "--json"])
    assert [r["ref"] for r in json.loads(res.output)["brokers"]] == ["s1/a1"]


def test_peek_cli(tmp_path: Path) -> None:
    cfg, config = cluster(tmp_path)
    buf = fill(cfg, "s1", "a1")
    # One more at capacity: seq 6 is evicted, seq 11 is binary.
    buf.append_many([Record("telemetry/s1/d2/raw", bytes(range(40)), device="s1/d2")], time.time())
    buf.close()
    res = runner.invoke(app, ["buffer", "peek", "--config", str(config), "--broker", "s1/a1", "-n", "3"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["broker", "seq", "age", "topic", "size", "payload"]
    assert [x.split()[1] for x in lines[1:]] == ["7", "8", "9"]
    assert '{"seq": 6}' in lines[1]
    res = runner.invoke(app, ["buffer", "peek", "--config", str(config), "--broker", "s1/a1", "-n", "9", "--json"])
    data = json.loads(res.output)
    assert len(data) == 5 and data[-1]["payload"].startswith("0x000102") and data[0]["id"] == "s1/a1/7"


def test_every_option_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "buffer.md").read_text()
    for command in ("stats", "peek"):
        assert f"edgemq buffer {command}" in doc
        res = runner.invoke(app, ["buffer", command, "--help"])
        for opt in ("--config", "--broker", "--json", *(("--site", "--interval") if command == "stats" else ("-n",))):
            assert opt in res.output, (command, opt)
            assert opt in doc or opt == "--config", (command, opt)
