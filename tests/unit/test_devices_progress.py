"""`edgemq devices simulate` start-up progress: connect rate and time remaining, rich and plain."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from broker.config import SiteConfig
from devices.fleet import FleetConfig, FleetStats
from edgemq.devices_cmd import _Display


def stats(t: float, connected: int) -> FleetStats:
    return FleetStats(devices=200, started=connected, connected=connected, connected_peak=connected, published=0,
                      acked=0, commands=0, errors=0, reconnects=0, finished=0, elapsed_s=t)  # fmt: skip


def fleet() -> FleetConfig:
    site = SiteConfig.model_validate({"id": "s1", "brokers": [{"id": "a1", "port": 1883}]})
    return FleetConfig(site=site, devices=200)


def test_plain_lines_show_connect_rate_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    d = _Display(Console(file=io.StringIO()), fleet(), None)
    d.update(stats(0.0, 0))
    d.update(stats(1.0, 50))  # a new batch started: a line
    lines = capsys.readouterr().out.splitlines()
    assert "connected=50/200 connect_rate=50/s connect_eta=3s" in lines[-1]
    d.update(stats(5.0, 200))
    assert "connect_rate" not in capsys.readouterr().out  # all connected: no start-up figures


def test_terminal_bar_shows_connect_rate() -> None:
    out = io.StringIO()
    d = _Display(Console(file=out, force_terminal=True, width=160), fleet(), None)
    with d:
        d.update(stats(0.0, 0))
        d.update(stats(1.0, 50))
    assert "50/200" in out.getvalue() and "50 conn/s" in out.getvalue()
