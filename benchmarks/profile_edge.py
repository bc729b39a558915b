"""Profile the edgemq edge node under a QoS 1 load with py-spy (issue 9: profile first).

Starts the edgemq topology (cloud + one edge node), a cloud subscriber and ``--pubs``
QoS 1 publishers flat out, then samples the edge node's process with py-spy twice:
``--format raw`` (collapsed stacks, analysed here: inclusive and self shares per
function) and a flame graph SVG. Writes benchmarks/results/edge-profile.{txt,svg}
and edge-profile-summary.json, and prints the top functions.

Run: ``.venv/bin/python benchmarks/profile_edge.py [--duration 20] [--pubs 10]``.

``--cpu`` instead measures the edge node's CPU per message (psutil: user + system CPU of
the edge process while it takes ``--count`` QoS 1 messages from 1 and from 100
``mosquitto_pub -l`` publishers, without and with a local ``mosquitto_sub`` on
``telemetry/#``, until the cloud subscriber, and the local one if any, has them all).
CPU per message is robust to a noisy shared machine, unlike throughput.
py-spy needs ptrace rights on the edge process (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import psutil
from harness import Blast, Sub, blast_files, make_topology

RESULTS = Path(__file__).resolve().parent / "results"


def analyse(raw: Path, top: int = 40) -> dict[str, object]:
    """Inclusive (on the stack) and self (leaf) sample shares per function from collapsed stacks."""
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for ln in raw.read_text().splitlines():
        stack, _, n = ln.rpartition(" ")
        if not stack:
            continue
        k = int(n)
        total += k
        frames = [f.strip() for f in stack.split(";")]
        for f in set(frames):
            incl[f] += k
        self_[frames[-1]] += k
    share = lambda c: [(f, round(100 * v / total, 1)) for f, v in c.most_common(top)]  # noqa: E731
    return {"samples": total, "inclusive_pct": share(incl), "self_pct": share(self_)}


def cpu_run(pubs: int, count: int, local: bool, timeout_s: float = 240.0) -> dict[str, object]:
    """Edge-node CPU µs per message for ``count`` QoS 1 messages from ``pubs`` publishers."""
    work = harness.new_workdir()
    try:
        topo = make_topology("edgemq", work / "edgemq").start()
        cloud_sub = Sub(work / "edgemq", "cloud", topo.cloud_port, 1)
        local_sub = Sub(work / "edgemq", "local", topo.edge_port, 1) if local else None
        files = blast_files(work, pubs, count // pubs)
        total = pubs * (count // pubs)
        proc = topo.edge_procs()
        time.sleep(1.0)
        cpu0, t0 = harness.cpu_seconds(proc), time.monotonic()
        blast = Blast(files, topo.edge_port, 1, hold_s=timeout_s + 30)
        subs = [cloud_sub] + ([local_sub] if local_sub else [])
        end = t0 + timeout_s
        firsts: dict[int, float] = {}
        while time.monotonic() < end and any(s.count() < total for s in subs):
            for i, s in enumerate(subs):
                if i not in firsts and s.count() >= total:
                    firsts[i] = time.monotonic() - t0
            time.sleep(0.05)
        wall = time.monotonic() - t0
        cpu = harness.cpu_seconds(proc) - cpu0
        got = [s.count() for s in subs]
        blast.close()
        for s in subs:
            s.close()
        return {
            "pubs": pubs,
            "local_sub": local,
            "sent": total,
            "received": got,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "cpu_us_per_msg": round(1e6 * cpu / max(1, min(got)), 1),
            "msg_per_s": round(min(got) / wall, 0),
            "load1": round(os.getloadavg()[0], 1),
        }
    finally:
        harness.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def broker_run(kind: str, pubs: int, count: int, timeout_s: float = 240.0) -> dict[str, object]:
    """CPU µs per message of one broker alone: publishers -> broker -> one local QoS 1 subscriber.

    ``kind``: ``edgemq`` (the cloud broker: EdgeBroker, ACL plugins, no buffer), ``amqtt``
    (stock amqtt 0.12.1, tests/protocol/stock_amqtt.py) or ``mosquitto``.
    """
    work = harness.new_workdir()
    try:
        if kind == "edgemq":
            topo = make_topology("edgemq", work / "b")
            topo.start_cloud()
            port, proc = topo.cloud_port, topo.cloud
        elif kind == "amqtt":
            port = harness.free_port()
            proc = harness.spawn(
                [sys.executable, "-m", "tests.protocol.stock_amqtt", str(port)],
                log=work / "amqtt.log",
                env={"PYTHONPATH": str(harness.ROOT)},
            )
            if not harness.wait_port(port):
                raise RuntimeError("stock amqtt did not start")
        else:
            topo = make_topology("loadgen", work / "b")
            topo.start_edge()
            port, proc = topo.edge_port, topo.edge
        assert proc is not None
        (work / "b").mkdir(exist_ok=True)
        sub = Sub(work / "b", "local", port, 1)
        files = blast_files(work, pubs, count // pubs)
        total = pubs * (count // pubs)
        ps = [psutil.Process(proc.pid)]
        time.sleep(1.0)
        cpu0, t0 = harness.cpu_seconds(ps), time.monotonic()
        blast = Blast(files, port, 1, hold_s=timeout_s + 30)
        while time.monotonic() < t0 + timeout_s and sub.count() < total:
            time.sleep(0.05)
        wall = time.monotonic() - t0
        cpu = harness.cpu_seconds(ps) - cpu0
        got = sub.count()
        blast.close()
        sub.close()
        return {
            "broker": kind,
            "pubs": pubs,
            "sent": total,
            "received": got,
            "wall_s": round(wall, 2),
            "cpu_us_per_msg": round(1e6 * cpu / max(1, got), 1),
            "msg_per_s": round(got / wall, 0),
            "load1": round(os.getloadavg()[0], 1),
        }
    finally:
        harness.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--pubs", type=int, default=10)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--local", action="store_true", help="profile with a local subscriber on telemetry/# too")
    ap.add_argument("--cpu", action="store_true", help="measure CPU µs per message instead of profiling")
    ap.add_argument("--count", type=int, default=20_000, help="messages per --cpu scenario")
    ap.add_argument("--scenarios", default="1,1L,100,100L", help="--cpu: publishers, L = with a local subscriber")
    ap.add_argument("--brokers", default="", help="compare brokers alone, e.g. edgemq,amqtt,mosquitto (with --cpu)")
    args = ap.parse_args()
    if args.cpu and args.brokers:
        for sc in args.scenarios.split(","):
            for kind in args.brokers.split(","):
                print(json.dumps(broker_run(kind, int(sc.rstrip("L")), args.count)), flush=True)
        return
    if args.cpu:
        for sc in args.scenarios.split(","):
            print(json.dumps(cpu_run(int(sc.rstrip("L")), args.count, sc.endswith("L"))), flush=True)
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = harness.new_workdir()
    try:
        topo = make_topology("edgemq", work / "edgemq").start()
        sub = Sub(work / "edgemq", "cloud", topo.cloud_port, 1)
        local = Sub(work / "edgemq", "local", topo.edge_port, 1) if args.local else None
        files = blast_files(work, args.pubs, 400_000 // args.pubs)
        blast = Blast(files, topo.edge_port, 1, hold_s=4 * args.duration + 60)
        time.sleep(3)
        pid = str(topo.edge.pid)  # type: ignore[union-attr]
        c0, t0 = sub.count(), time.monotonic()
        raw = RESULTS / "edge-profile.txt"
        common = ["--pid", pid, "--duration", str(args.duration), "--rate", str(args.rate), "--nonblocking"]
        subprocess.run(
            [spy, "record", "--format", "raw", "-o", str(raw), *common], check=True, stdout=subprocess.DEVNULL
        )
        rate = (sub.count() - c0) / (time.monotonic() - t0)
        subprocess.run(
            [spy, "record", "-o", str(RESULTS / "edge-profile.svg"), *common], check=True, stdout=subprocess.DEVNULL
        )
        dump = subprocess.run([spy, "dump", "--pid", pid], capture_output=True, text=True, check=False).stdout
        blast.close()
        sub.close()
        if local is not None:
            local.close()
    finally:
        harness.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    summary = analyse(raw)
    summary.update(
        publishers=args.pubs,
        qos=1,
        local_subscriber=args.local,
        cloud_msg_per_s_while_sampling=rate,
        machine=harness.machine(),
        dump_tail=dump[-4000:],
    )
    (RESULTS / "edge-profile-summary.json").write_text(json.dumps(summary, indent=1))
    print(f"delivered to cloud while sampling: {rate:,.0f} msg/s; samples {summary['samples']}")
    for title in ("inclusive_pct", "self_pct"):
        print(f"--- {title}")
        for f, pct in summary[title]:  # type: ignore[union-attr]
            print(f"{pct:5.1f}%  {f}")


if __name__ == "__main__":
    main()
