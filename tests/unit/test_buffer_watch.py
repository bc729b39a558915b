"""`edgemq buffer stats --watch [--until-empty]`: drain progress arithmetic and the command on a real file."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from bridge.inspection import DrainProgress, FileSnapshot, drain_progress, site_progress
from edgemq import buffer_cmd
from edgemq.buffer_watch import watch
from edgemq.node import buffer_path
from tests.unit.test_buffer_cmd import app, cluster, fill, runner


def snap(t: float, depth: int, accepted: int, forwarded: int, **dropped: int) -> FileSnapshot:
    return FileSnapshot(
        path="x", taken_at=t, depth_messages=depth, depth_bytes=depth * 10, oldest_enqueued_at=None,
        head_seq=None, tail_seq=None, accepted=accepted, forwarded=forwarded, dropped=dropped,
        peak_depth_messages=depth, peak_depth_bytes=depth * 10, last_seq=accepted,
    )  # fmt: skip


def test_progress_counts_backlog_at_start_plus_arrivals() -> None:
    start = snap(100.0, depth=100, accepted=100, forwarded=0)
    # 10 s later: 30 more arrived, 80 forwarded: 50 left of 130.
    latest = snap(110.0, depth=50, accepted=130, forwarded=80)
    p = drain_progress(start, start, latest)
    assert p is not None
    assert (p.total, p.completed, p.depth, p.forwarded) == (130, 80, 50, 80)
    assert p.rate == 8.0 and p.net_rate == 5.0 and p.eta_s == 10.0 and not p.stalled


def test_progress_rates_are_over_the_window_not_since_start() -> None:
    start = snap(0.0, depth=100, accepted=100, forwarded=0)
    window = snap(50.0, depth=90, accepted=100, forwarded=10)
    latest = snap(60.0, depth=50, accepted=100, forwarded=50)
    p = drain_progress(start, window, latest)
    assert p is not None and (p.completed, p.total) == (50, 100)
    assert p.rate == 4.0 and p.eta_s == 12.5


def test_progress_stalled_when_not_shrinking_and_unmeasured_at_first() -> None:
    start = snap(0.0, depth=10, accepted=10, forwarded=0)
    first = drain_progress(start, start, start)
    assert first is not None and first.rate is None and first.eta_s is None and not first.stalled
    grown = snap(2.0, depth=14, accepted=16, forwarded=2)  # 2 forwarded, 6 arrived
    p = drain_progress(start, start, grown)
    assert p is not None and p.stalled and p.eta_s is None and (p.completed, p.total) == (2, 16)
    assert p.rate == 1.0 and p.net_rate == -2.0


def test_progress_counts_rows_gone_by_any_door_and_not_refused_ones() -> None:
    start = snap(0.0, depth=10, accepted=10, forwarded=0)
    # 4 expired, 2 refused at the door (rejected): counted accepted but never a row; 4 gone by hand.
    latest = snap(1.0, depth=0, accepted=12, forwarded=0, expired=4, rejected=2)
    p = drain_progress(start, start, latest)
    assert p is not None and p.empty and p.eta_s == 0.0 and not p.stalled
    assert (p.total, p.completed, p.forwarded) == (10, 10, 0)  # the bar ends exactly when empty


def test_progress_restarts_when_the_file_is_replaced_or_time_goes_back() -> None:
    a = snap(10.0, depth=10, accepted=50, forwarded=40)
    assert drain_progress(a, a, snap(11.0, depth=3, accepted=3, forwarded=0)) is None
    assert drain_progress(a, a, snap(9.0, depth=10, accepted=50, forwarded=40)) is None


def test_site_progress_is_the_slowest_broker_and_stalled_if_any_is() -> None:
    def dp(depth: int, eta: float | None, stalled: bool = False) -> DrainProgress:
        return DrainProgress(total=10, completed=10 - depth, depth=depth, forwarded=10 - depth, rate=1.0,
                             net_rate=1.0, eta_s=eta, stalled=stalled)  # fmt: skip

    s = site_progress([dp(4, 4.0), dp(8, 8.0), dp(0, 0.0)])
    assert (s.total, s.completed, s.depth, s.rate, s.eta_s, s.stalled) == (30, 18, 12, 3.0, 8.0, False)
    s = site_progress([dp(4, 4.0), dp(8, None, stalled=True)])
    assert s.eta_s is None and s.stalled
    assert site_progress([dp(0, 0.0)]).eta_s == 0.0 and site_progress([]).empty


class FakeTime:
    """A clock that a sleep moves on, calling ``on_sleep`` (the drain between two reads)."""

    def __init__(self, on_sleep: list[object]) -> None:
        self.now = 1000.0
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        if self.on_sleep:
            step = self.on_sleep.pop(0)
            assert callable(step)
            step()


def delete_rows(path: Path, n: int) -> None:
    """Rows taken out between two reads, without touching the counters (as by hand)."""
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM messages WHERE seq IN (SELECT seq FROM messages ORDER BY seq LIMIT ?)", (n,))
    db.close()


def test_watch_until_empty_on_a_real_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, config = cluster(tmp_path)
    fill(cfg, "s1", "a1").close()  # 5 rows buffered; s1/a2 has no buffer file: nothing to drain
    path = buffer_path(cfg, "s1", "a1")
    fake = FakeTime([lambda: delete_rows(path, 3), lambda: None, lambda: delete_rows(path, 2)])
    monkeypatch.setattr(buffer_cmd, "_clock", fake.clock)
    monkeypatch.setattr(buffer_cmd, "_sleep", fake.sleep)
    res = runner.invoke(app, ["buffer", "stats", "--config", str(config), "--site", "s1", "--until-empty"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) == 4 and "\x1b[" not in res.output  # one plain line per refresh off a terminal
    assert lines[0].startswith("+0s s1 (total) 0/5 (0%) depth 5 - eta -")
    assert "s1/a1 3/5 (60%) depth 2 3.0/s eta 0:01" in lines[1]  # 3 in 1 s: 2 left at 3/s
    assert "s1/a1 3/5 (60%) depth 2 1.5/s eta 0:01" in lines[2]  # window of 2 s
    assert "eta stalled" not in lines[2]  # shrank over the window
    assert lines[3].startswith("+3s s1 (total) 5/5 (100%) depth 0") and "s1/a2 no buffer" in lines[3]


def test_watch_times_out_stalled_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, config = cluster(tmp_path)
    fill(cfg, "s1", "a1").close()
    fake = FakeTime([])
    monkeypatch.setattr(buffer_cmd, "_clock", fake.clock)
    monkeypatch.setattr(buffer_cmd, "_sleep", fake.sleep)
    args = ["buffer", "stats", "--config", str(config), "--broker", "s1/a1", "--until-empty", "--timeout", "3"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "eta stalled" in res.output.splitlines()[-1]
    res = runner.invoke(app, [*args[:-3], "--watch", "--timeout", "2", "--json"])
    assert res.exit_code == 0, res.output  # a plain watch that ends is not a failure
    ticks = [json.loads(x) for x in res.output.splitlines()]
    assert [t["elapsed_s"] for t in ticks] == [0.0, 1.0, 2.0]
    a1 = ticks[-1]["sites"][0]["brokers"][0]
    assert a1["ref"] == "s1/a1" and a1["stalled"] is True and a1["depth"] == 5 and a1["rate"] == 0.0


def test_watch_draws_rich_bars_on_a_terminal(tmp_path: Path) -> None:
    cfg, _ = cluster(tmp_path)
    fill(cfg, "s1", "a1").close()
    path = buffer_path(cfg, "s1", "a1")
    fake = FakeTime([lambda: delete_rows(path, 1)])
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    code = watch([("s1", "a1")], lambda ref, now: buffer_cmd._watch_read(cfg, ref, now), period_s=1.0,
                 until_empty=False, timeout_s=1.0, console=console, clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    text = out.getvalue()
    assert code == 0 and "\x1b[" in text
    assert "1/5" in text and "1.0 msg/s" in text and "0:04 left" in text and "s1 (total)" in text


def test_watch_options_are_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "buffer.md").read_text()
    res = runner.invoke(app, ["buffer", "stats", "--help"])
    for opt in ("--watch", "--until-empty", "--timeout"):
        assert opt in res.output and opt in doc, opt
