"""`edgemq cluster up / status / down` end to end, under supervisord, with a SIGKILL'd component."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.probe import mqtt_answers
from tests.integration.conftest import make_config, to_toml, wait_for

pytestmark = [pytest.mark.timeout(240)]


def edgemq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgemq", *args], capture_output=True, text=True, cwd=str(cwd), timeout=120, check=False
    )


def status(cfg_path: Path) -> dict[str, dict[str, Any]]:
    proc = edgemq("cluster", "status", "--config", str(cfg_path), "--json", cwd=cfg_path.parent)
    assert proc.returncode == 0, proc.stderr
    return {row["component"]: row for row in json.loads(proc.stdout)}


def test_cluster_up_status_kill_restart_down(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cfg_path = tmp_path / "cluster.toml"
    cfg_path.write_text(to_toml(cfg))
    try:
        up = edgemq("cluster", "up", "--config", str(cfg_path), "--devices", "12", "--device-rate", "2", cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "plant-1.a1" in up.stdout and str(cfg.sites[0].brokers[0].port) in up.stdout
        rows = status(cfg_path)
        assert set(rows) == {"cloud", "plant-1.a1", "plant-1.a2", "plant-1.a3", "devices", "dashboard"}
        assert all(r["state"] == "RUNNING" and r["pid"] for r in rows.values()), rows
        assert all(r["answers"] for r in rows.values() if r["kind"] != "devices"), rows
        # The fleet starts after the brokers answer: all connect, none had to retry.
        wait_for(lambda: status(cfg_path)["devices"].get("connected") == 12, 30, "fleet connected", interval=0.5)
        wait_for(lambda: (status(cfg_path)["devices"].get("acked") or 0) > 24, 30, "fleet publishing", interval=0.5)
        assert status(cfg_path)["devices"]["errors"] == 0
        rows = {k: v for k, v in status(cfg_path).items() if k not in ("devices", "dashboard")}

        # Running `up` twice does not start a second copy.
        again = edgemq("cluster", "up", "--config", str(cfg_path), cwd=tmp_path)
        assert again.returncode == 0
        assert "already running" in again.stderr
        assert {k: r["pid"] for k, r in status(cfg_path).items() if k in rows} == {k: r["pid"] for k, r in rows.items()}

        # SIGKILL one edge node: supervisord restarts it, logs the restart, and it answers again.
        victim = rows["plant-1.a2"]["pid"]
        os.kill(victim, signal.SIGKILL)
        b = cfg.sites[0].brokers[1]

        def restarted() -> bool:
            r = status(cfg_path)["plant-1.a2"]
            return bool(r["state"] == "RUNNING" and r["pid"] not in (None, victim) and mqtt_answers(b.host, b.port))

        wait_for(restarted, 60, "plant-1.a2 restarted after SIGKILL", interval=0.5)
        sup_log = (cfg.run_dir / "logs" / "supervisord.log").read_text()
        assert "plant-1.a2" in sup_log and "not expected" in sup_log

        # Log and data files live under the run directory.
        assert (cfg.run_dir / "logs" / "plant-1.a1.log").exists()
        assert (cfg.run_dir / "data" / "plant-1" / "a1.sqlite3").exists()
    finally:
        down = edgemq("cluster", "down", "--config", str(cfg_path), cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    pids = [r["pid"] for r in rows.values()]
    wait_for(lambda: not any(_alive(p) for p in pids), 30, "all components stopped")
    rows = status(cfg_path)
    assert all(r["state"] == "STOPPED" for r in rows.values())
    # down when nothing runs is harmless
    assert edgemq("cluster", "down", "--config", str(cfg_path), cwd=tmp_path).returncode == 0


def test_bad_config_stops_before_anything_starts(tmp_path: Path) -> None:
    cfg_path = tmp_path / "cluster.toml"
    cfg_path.write_text('[[sites]]\nid = "p"\n[[sites.brokers]]\nid = "a1"\nport = 1\nbogus = 2\n')
    proc = edgemq("cluster", "up", "--config", str(cfg_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "sites.0.brokers.0.bogus: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of an exited child still "exists"; check /proc state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
