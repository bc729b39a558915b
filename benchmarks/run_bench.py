"""``make bench``: edgemq against Mosquitto, side by side in one run (issue 9).

Scenarios (each for edgemq and for an edge Mosquitto bridged at QoS 1 to a cloud
Mosquitto, alternating, fresh processes per run, medians of ``--reps``; e2e and drain
also for ``edgemq-mosq``: our edge node with Mosquitto as the cloud, i.e. the same cloud
as Mosquitto's bridge, so the edge node alone is compared):

  loadgen  the load generator against one Mosquitto alone (its own ceiling)
  passthrough  stock amqtt 0.12.1 alone, QoS 1, 1 publisher -> 1 subscriber (the "10x stock" target):
           with its packaged defaults (`amqtt` command) and with our minimal plugin settings;
           and edgemq's broker alone (`edgemq broker cloud`: our broker layer, no buffer or bridge)
  cpualone  CPU per message at the fixed rate of one broker alone (edgemq's, Mosquitto, stock amqtt),
           publisher -> broker -> local QoS 1 subscriber: the part of the edge node's figure with no
           buffer and no bridge
  ingest   edge ingest, QoS 0/1, 1/100 publishers, 100-byte payloads (local subscriber)
  e2e      edge -> cloud QoS 1 with the durable buffer (cloud subscriber)
  latency  p50/p99/p99.9 at fixed offered rates (edge and cloud subscribers)
  cpu      broker CPU per delivered message at fixed offered rates (cloud subscriber)
  drain    backlog filled while the cloud is down, then drained
  kill     kill -9 of the edge broker under QoS 1 load: acknowledged messages that reach the cloud
  overload QoS 0 at 2x edgemq's measured ingest capacity for a bounded time
  idle     N idle connections: RSS per connection

Run: ``.venv/bin/python benchmarks/run_bench.py [--quick] [--reps 3] [--only e2e,latency]
[--big]``. Writes benchmarks/results/latest.json, PNG plots beside it, and the
``<!-- bench:begin -->`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kill
import harness
import report
import scenarios as sc

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = RESULTS / "quick"  # --quick never overwrites the figures of a full run
KINDS = ("edgemq", "mosquitto")
#: e2e and drain also measure our edge node against Mosquitto as the cloud.
EDGE_KINDS = ("edgemq", "edgemq-mosq", "mosquitto")
KILL_KINDS = ("edgemq", "mosquitto", "mosquitto-persist")
KILL_CASES = (
    ("QoS 1 at 1,000 msg/s, cloud up", {"outage": False}),
    ("QoS 1 at 1,000 msg/s, cloud down (backlog at the edge)", {"outage": True}),
)


def cases(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any], tuple[str, ...]]]:
    """(scenario, case label, kwargs, kinds) in run order."""
    out: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = []
    blast = [(q, n) for q in (0, 1) for n in (1, 100)]
    for q, n in blast:
        out.append(
            (
                "loadgen",
                f"QoS {q}, {n} publisher{'s' if n > 1 else ''}",
                {"qos": q, "n_pubs": n, "at": "edge"},
                ("loadgen",),
            )
        )
    for q, n in blast:
        out.append(
            ("ingest", f"QoS {q}, {n} publisher{'s' if n > 1 else ''}", {"qos": q, "n_pubs": n, "at": "edge"}, KINDS)
        )
    out.append(
        (
            "passthrough",
            "QoS 1, 1 publisher",
            {"qos": 1, "n_pubs": 1, "at": "edge"},
            ("amqtt-default", "amqtt-stock", "edgemq-alone"),
        )
    )
    for n in (1, 100):
        out.append(
            ("e2e", f"QoS 1, {n} publisher{'s' if n > 1 else ''}", {"qos": 1, "n_pubs": n, "at": "cloud"}, EDGE_KINDS)
        )
    for r in args.latency_rates:
        out.append(("latency", f"{r:,} msg/s QoS 1", {"rate": r, "qos": 1, "subs_at": ("edge", "cloud")}, KINDS))
    for r in args.cpu_rates:
        out.append(("cpu", f"{r:,} msg/s QoS 1", {"rate": r, "qos": 1, "subs_at": ("cloud",)}, KINDS))
    for r in args.cpu_rates:
        out.append(
            (
                "cpualone",
                f"{r:,} msg/s QoS 1",
                {"rate": r, "qos": 1, "subs_at": ("edge",)},
                ("edgemq-alone", "loadgen", "amqtt-stock"),
            )
        )
    return [c for c in out if c[0] in args.only]


def planned(args: argparse.Namespace, todo: list[tuple[str, str, dict[str, Any], tuple[str, ...]]]) -> list[str]:
    """The scenario of every run ``Runner.main`` will make, in order (for "run i of N" and the estimate)."""
    names = [scenario for _ in range(args.reps) for scenario, _, _, kinds in todo for _ in kinds]
    if "drain" in args.only:
        names += ["drain"] * len(args.drain_kinds)
    if "kill" in args.only:
        names += ["kill"] * len(KILL_KINDS) * len(KILL_CASES)
    if "overload" in args.only:
        names += ([] if args.overload_rate else ["calibrate"]) + ["overload"] * len(KINDS)
    if "idle" in args.only:
        names += ["idle"] * len(KINDS)
    return names


def remaining_s(done: list[tuple[str, float]], todo: list[str]) -> float | None:
    """Seconds the runs in ``todo`` should take: each at the mean wall time of the finished runs of
    its scenario (scenarios differ by minutes), else of all finished runs; None before any finished."""
    if not done:
        return None
    overall = sum(w for _, w in done) / len(done)
    by: dict[str, list[float]] = {}
    for scenario, wall in done:
        by.setdefault(scenario, []).append(wall)
    return sum(statistics.fmean(by[s]) if s in by else overall for s in todo)


def clock_text(s: float | None) -> str:
    if s is None:
        return "?"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


class BenchProgress:
    """Which run is going, i of N, elapsed and estimated remaining: a rich bar on a terminal,
    plain lines otherwise (a long batch job usually writes to a log)."""

    def __init__(self, plan: list[str], console: Console | None = None) -> None:
        self.plan = plan
        self.done: list[tuple[str, float]] = []
        self.t0 = time.monotonic()
        self.console = console or Console()
        self.bar: Progress | None = None
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("~{task.fields[left]} left"),
                console=self.console,
            )
            self.task = self.bar.add_task("benchmark", total=len(plan), left="?")
            self.bar.start()

    @property
    def total(self) -> int:
        return max(len(self.plan), len(self.done) + 1)

    def left_s(self) -> float | None:
        return remaining_s(self.done, self.plan[len(self.done) :])

    def begin(self, i: int, scenario: str, case: str, kind: str, rep: int) -> None:
        what = f"{scenario} {case} {kind} rep {rep}"
        if self.bar is not None:
            self.bar.update(
                self.task, description=f"[{i}/{self.total}] {what}", total=self.total, left=clock_text(self.left_s())
            )
        else:
            print(
                f"[{time.strftime('%H:%M:%S')}] run {i}/{self.total}: {what} "
                f"(elapsed {clock_text(time.monotonic() - self.t0)}, ~{clock_text(self.left_s())} left)",
                flush=True,
            )

    def end(self, scenario: str, wall_s: float, line: str) -> None:
        self.done.append((scenario, wall_s))
        if self.bar is not None:
            self.bar.update(self.task, completed=len(self.done), left=clock_text(self.left_s()))
            self.bar.console.print(line)
        else:
            print(line, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_one(scenario: str, kind: str, work: Path, kw: dict[str, Any], p: sc.Params) -> dict[str, Any]:
    if scenario in ("loadgen", "passthrough", "ingest", "e2e", "calibrate"):
        return sc.run_blast(kind, work, p=p, **kw)
    if scenario in ("latency", "cpu", "cpualone"):
        return sc.run_paced(kind, work, p=p, **kw)
    if scenario == "drain":
        return sc.run_drain(kind, work, p=p)
    if scenario == "kill":
        return bench_kill.run_kill(kind, work, **kw)
    if scenario == "overload":
        return sc.run_overload(kind, work, p=p, **kw)
    if scenario == "idle":
        return sc.run_idle(kind, work, p=p)
    raise ValueError(scenario)


class Runner:
    def __init__(self, args: argparse.Namespace, p: sc.Params) -> None:
        self.args, self.p = args, p
        self.out = QUICK_RESULTS if args.quick else RESULTS
        self.work = harness.new_workdir()
        self.data: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": harness.machine(),
            "params": vars(p),
            "args": {k: v for k, v in vars(args).items() if k != "only"} | {"only": sorted(args.only)},
            "loadavg_start": os.getloadavg(),
            "runs": [],
        }
        self.n = 0
        self.progress: BenchProgress | None = None
        if args.merge and (self.out / "latest.json").exists():
            # Re-run some scenarios, keep the others' runs from the previous results file.
            old = json.loads((self.out / "latest.json").read_text())
            # A drain of another size (e.g. --big's 1,000,000 next to the default 100,000) is kept.
            drain_case = f"{p.drain_messages:,} messages"
            kept = [
                r
                for r in old.get("runs", [])
                if r["scenario"] not in args.only | {"calibrate"}
                or (r["scenario"] == "drain" and r["case"] != drain_case)
            ]
            self.data["runs"] = kept
            self.data["merged_from"] = {
                "started": old.get("started"),
                "loadavg_start": old.get("loadavg_start"),
                "loadavg_end": old.get("loadavg_end"),
                "total_s": old.get("total_s"),
                "machine": old.get("machine"),
                "kept_runs": len(kept),
                "only": old.get("args", {}).get("only"),
                "previous": old.get("merged_from"),
            }
            self.data["args"]["reps"] = old.get("args", {}).get("reps", args.reps)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "latest.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.out / "latest.json")

    def run(self, scenario: str, case: str, kind: str, rep: int, kw: dict[str, Any]) -> dict[str, Any] | None:
        self.n += 1
        work = self.work / f"{self.n:03d}-{scenario}-{kind}"
        if self.progress is not None:
            self.progress.begin(self.n, scenario, case, kind, rep)
        load = os.getloadavg()
        t0 = time.monotonic()
        rec: dict[str, Any] = {
            "scenario": scenario,
            "case": case,
            "kind": kind,
            "rep": rep,
            "loadavg_start": load,
            "params": {k: v for k, v in kw.items()},
        }
        try:
            rec["result"] = run_one(scenario, kind, work, kw, self.p)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failed run is recorded, the others go on
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["traceback"] = traceback.format_exc(limit=5)
        finally:
            harness.stop_all()
        rec["wall_s"] = time.monotonic() - t0
        rec["loadavg_end"] = os.getloadavg()
        self.data["runs"].append(rec)
        self.save()
        short = report.one_line(rec)
        line = (
            f"[{time.strftime('%H:%M:%S')}] {scenario:8s} {case:28s} {kind:9s} rep {rep}: {short} "
            f"({rec['wall_s']:.0f}s, load {load[0]:.1f})"
        )
        if self.progress is not None:
            self.progress.end(scenario, rec["wall_s"], line)
        else:
            print(line, flush=True)
        return rec.get("result")

    def main(self) -> None:
        t_start = time.monotonic()
        todo = cases(self.args)
        self.progress = BenchProgress(planned(self.args, todo))
        try:
            self._run_all(todo)
        finally:
            self.progress.stop()
        self.data["loadavg_end"] = os.getloadavg()
        self.data["total_s"] = time.monotonic() - t_start
        self.save()

    def _run_all(self, todo: list[tuple[str, str, dict[str, Any], tuple[str, ...]]]) -> None:
        for rep in range(self.args.reps):
            for scenario, case, kw, kinds in todo:
                order = kinds if rep % 2 == 0 else tuple(reversed(kinds))
                for kind in order:
                    self.run(scenario, case, kind, rep, kw)
        if "drain" in self.args.only:
            for kind in self.args.drain_kinds:
                self.run("drain", f"{self.p.drain_messages:,} messages", kind, 0, {})
        if "kill" in self.args.only:
            for case, kw in KILL_CASES:
                for kind in KILL_KINDS:
                    self.run("kill", case, kind, 0, kw)
        if "overload" in self.args.only:
            rate = self.overload_rate()
            for kind in KINDS:
                self.run("overload", f"QoS 0 at {rate:,.0f} msg/s", kind, 0, {"rate": rate})
        if "idle" in self.args.only:
            for kind in KINDS:
                self.run("idle", f"{self.p.idle_connections:,} connections", kind, 0, {})

    def overload_rate(self) -> float:
        """2x edgemq's QoS 0 single-publisher ingest rate, measured just before (or --overload-rate).

        Calibrated right before the overload runs rather than taken from the ingest runs, because
        on a shared machine the load (and so the capacity) changes during the benchmark.
        """
        if self.args.overload_rate:
            return float(self.args.overload_rate)
        kw = {"qos": 0, "n_pubs": 1, "at": "edge"}
        got = self.run("calibrate", "QoS 0, 1 publisher", "edgemq", 0, kw)
        rates = [got["msg_per_s"]] if got and got.get("msg_per_s") else []
        if not rates:  # fall back on the ingest runs of this benchmark
            rates = [
                r["result"]["msg_per_s"]
                for r in self.data["runs"]
                if r["scenario"] == "ingest" and r["kind"] == "edgemq" and r["params"] == kw and r.get("result")
            ]
        base = statistics.median(rates) if rates else 2000.0
        self.data["overload_basis"] = {
            "edgemq_qos0_ingest_msg_per_s": base,
            "factor": 2.0,
            "from": "calibration run" if got else "ingest runs",
        }
        return round(2 * base, -1)


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, sc.Params]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="2-3 minute smoke: 1 rep, short windows, small counts; writes results/quick/, not BENCHMARKS.md",
    )
    ap.add_argument("--reps", type=int, default=None, help="repetitions of each measured case (default 2)")
    ap.add_argument("--only", default="loadgen,passthrough,ingest,e2e,latency,cpu,cpualone,drain,kill,overload,idle")
    ap.add_argument(
        "--big",
        action="store_true",
        help="drain 1,000,000 messages (edgemq's backlog written straight "
        "into its buffer file) and hold 10,000 idle connections",
    )
    ap.add_argument("--drain-messages", type=int, default=None)
    ap.add_argument(
        "--drain-kinds",
        default=",".join(EDGE_KINDS),
        help="which topologies drain (e.g. edgemq-mosq,mosquitto for a 1,000,000 drain without "
        "the amqtt cloud, which alone takes ~12 min to acknowledge it)",
    )
    ap.add_argument("--idle-connections", type=int, default=None)
    ap.add_argument("--overload-s", type=float, default=None)
    ap.add_argument("--overload-rate", type=float, default=None, help="fixed offered rate (default 2x measured)")
    ap.add_argument("--window-s", type=float, default=None)
    ap.add_argument("--no-report", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="re-run only --only scenarios; keep the other scenarios' runs from results/latest.json",
    )
    args = ap.parse_args(argv)
    p = sc.Params()
    args.latency_rates = [1000, 5000]
    args.cpu_rates = [1000]
    if args.quick:
        p = sc.Params(
            window_s=2.0,
            max_messages=40_000,
            latency_s=3.0,
            drain_messages=5_000,
            drain_cap_s=60,
            overload_s=5.0,
            overload_grace_s=8.0,
            idle_connections=300,
        )
        args.cpu_rates = [1000]
        args.reps = args.reps or 1
    args.reps = args.reps or 2
    if args.big:
        p.drain_messages, p.idle_connections, p.drain_cap_s = 1_000_000, 10_000, 3600
        p.drain_prefill = True
    p.drain_messages = args.drain_messages or p.drain_messages
    p.idle_connections = args.idle_connections or p.idle_connections
    p.overload_s = args.overload_s or p.overload_s
    p.window_s = args.window_s or p.window_s
    args.only = set(args.only.split(","))
    args.drain_kinds = tuple(args.drain_kinds.split(","))
    return args, p


def main() -> None:
    args, p = parse()
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install mosquitto mosquitto-clients")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, p.idle_connections + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    runner = Runner(args, p)
    try:
        runner.main()
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        runner.data["interrupted"] = True
        runner.save()
    finally:
        harness.stop_all()
        shutil.rmtree(runner.work, ignore_errors=True)
    summary = report.write_all(runner.data, runner.out, update_md=not (args.no_report or args.quick))
    print(summary)


if __name__ == "__main__":
    main()
