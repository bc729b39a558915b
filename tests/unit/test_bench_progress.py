"""`benchmarks/run_bench.py` progress: the plan counts every run, the estimate weighs runs by scenario."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import run_bench


@pytest.mark.parametrize(
    "argv", [[], ["--quick"], ["--only", "e2e,overload", "--overload-rate", "500"], ["--reps", "3"]]
)
def test_plan_matches_the_runs_made(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args, p = run_bench.parse(argv)
    monkeypatch.setattr(run_bench.harness, "new_workdir", lambda: tmp_path)
    runner = run_bench.Runner(args, p)
    made: list[str] = []

    def fake_run(scenario: str, case: str, kind: str, rep: int, kw: dict[str, Any]) -> dict[str, Any]:
        made.append(scenario)
        return {"msg_per_s": 1000.0}

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(runner, "save", lambda: None)
    runner.main()
    assert made == run_bench.planned(args, run_bench.cases(args))


def test_remaining_uses_each_scenarios_own_mean() -> None:
    assert run_bench.remaining_s([], ["e2e"]) is None
    done = [("ingest", 10.0), ("ingest", 20.0), ("drain", 90.0)]
    # ingest at 15 s, drain at 90 s, idle unseen: the mean of all runs (40 s).
    assert run_bench.remaining_s(done, ["ingest", "drain", "idle"]) == 15.0 + 90.0 + 40.0
    assert run_bench.clock_text(3725.0) == "1h02m" and run_bench.clock_text(75.0) == "1m15s"


def test_plain_lines_name_the_run_its_index_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    prog = run_bench.BenchProgress(["ingest", "ingest", "drain"], console=Console(file=io.StringIO()))
    prog.begin(1, "ingest", "QoS 0, 1 publisher", "edgemq", 0)
    prog.end("ingest", 30.0, "result line")
    prog.begin(2, "ingest", "QoS 0, 1 publisher", "mosquitto", 0)
    out = capsys.readouterr().out.splitlines()
    assert "run 1/3: ingest QoS 0, 1 publisher edgemq rep 0" in out[0] and "~? left" in out[0]
    assert out[1] == "result line"
    assert "run 2/3: ingest" in out[2] and "~1m00s left" in out[2]  # two runs at ingest's 30 s


def test_terminal_bar() -> None:
    out = io.StringIO()
    prog = run_bench.BenchProgress(["idle", "idle"], console=Console(file=out, force_terminal=True, width=140))
    prog.begin(1, "idle", "300 connections", "edgemq", 0)
    prog.end("idle", 65.0, "result line")
    prog.stop()
    text = out.getvalue()
    assert "result line" in text and "1/2" in text and "~1m05s left" in text
