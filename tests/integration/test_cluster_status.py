"""`cluster up` with the dashboard as a supervised component, and `cluster status` with live
membership from the cloud's retained state (brokers of other machines included), --json and --watch."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgemq.cluster import ClusterRunner
from edgemq.status_cmd import run_status, up_progress
from tests.integration.conftest import free_port, make_config, publish_once, to_toml, wait_for

pytestmark = [pytest.mark.timeout(240)]


def test_up_with_dashboard_then_live_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(tmp_path)
    cfg_path = tmp_path / "cluster.toml"
    cfg_path.write_text(to_toml(cfg))
    runner = ClusterRunner(cfg, cfg_path, dashboard=True, dashboard_port=free_port())
    steps: list[tuple[int, int, str]] = []
    try:
        with up_progress(Console(file=io.StringIO())) as (say, step):
            rows = runner.up(progress=say, step=lambda d, t, w: (steps.append((d, t, w)), step(d, t, w)))
        assert steps[-1][:2] == (5, 5) and steps[-1][2] == "dashboard", steps
        by = {r["component"]: r for r in rows}
        assert by["dashboard"]["kind"] == "dashboard" and by["dashboard"]["state"] == "RUNNING"
        assert by["dashboard"]["answers"] is True
        with urllib.request.urlopen(runner.dashboard_url(), timeout=10) as resp:
            assert b"edgemq" in resp.read()
        # The supervisor's conf starts the dashboard only after the brokers (autostart=false).
        assert "[program:dashboard]" in runner.conf_path.read_text()

        # A broker on another machine is known only from the cloud's retained messages.
        publish_once(
            cfg.cloud.host,
            cfg.cloud.port,
            "edgemq/plant-9/z1/state",
            b'{"site": "plant-9", "broker": "z1", "state": "online"}',
            retain=True,
        )

        def live() -> dict[str, dict[str, Any]]:
            capsys.readouterr()
            run_status(runner, as_json=True)
            return {r["component"]: r for r in json.loads(capsys.readouterr().out)}

        wait_for(
            lambda: all(live()[f"plant-1.{b.id}"]["member"] == "online" for b in cfg.sites[0].brokers),
            60,
            "every edge online at the cloud",
            interval=0.5,
        )
        rows2 = live()
        assert rows2["plant-9.z1"]["kind"] == "remote" and rows2["plant-9.z1"]["member"] == "online"
        assert rows2["dashboard"]["url"].startswith("http://127.0.0.1:")
        assert all(rows2[f"plant-1.{b.id}"]["metrics"] for b in cfg.sites[0].brokers)

        # --watch off a terminal: plain snapshots, one per second, with msg/s from successive samples.
        capsys.readouterr()
        run_status(runner, watch=True, iterations=3, interval=1.1, console=Console(file=io.StringIO()))
        out = capsys.readouterr().out
        assert out.count("# ") == 3 and out.count("plant-1.a1") == 3 and "msg/s" in out
    finally:
        runner.down()
    assert not runner.running()
