"""Buffer-only throughput: ingest with group commit per durability mode, and drain.

Method: a fresh buffer file per mode in --dir (default: a temp dir on the same
disk as the working directory), ``--payload``-byte payloads on a 20-byte topic.

* core ingest: ``Buffer.append_many`` in batches of ``--batch`` (one transaction each);
* core ingest, one record per transaction (``--single`` records): what group commit saves;
* store ingest: ``Store.append`` from ``--producers`` concurrent asyncio tasks (the real
  path: writer thread, 2 ms group-commit window), ``--count`` records;
* drain: ``read(limit=--batch)`` then ``ack`` of what was read, until empty;
* reopen: ``Buffer.open`` on the full file (includes ``PRAGMA quick_check``).

Run: ``.venv/bin/python benchmarks/buffer_bench.py [--count 200000] [--out result.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdsection import replace_section

from bridge.buffer import Buffer, Durability, Record
from bridge.store import Store

RESULTS = Path(__file__).resolve().parent / "results" / "buffer.json"

MODES: tuple[Durability, ...] = ("fsync", "os", "relaxed")
CAP = {"max_messages": 10**9, "max_bytes": 10**12}


def records(n: int, payload: int) -> list[Record]:
    return [Record(f"telemetry/p1/d{i % 100:03d}/t", b"x" * payload, device=f"d{i % 100}") for i in range(n)]


def core_ingest(path: Path, mode: Durability, recs: list[Record], batch: int) -> dict[str, Any]:
    buf = Buffer.open(path, durability=mode, **CAP)
    t0 = time.perf_counter()
    for i in range(0, len(recs), batch):
        buf.append_many(recs[i : i + batch], now=time.time())
    dt = time.perf_counter() - t0
    commits = buf.commits
    buf.close()
    return {"messages": len(recs), "seconds": dt, "msg_per_s": len(recs) / dt, "commits": commits}


def drain(path: Path, mode: Durability, batch: int) -> dict[str, Any]:
    buf = Buffer.open(path, durability=mode, **CAP)
    n = 0
    pos = 0
    t0 = time.perf_counter()
    while True:
        got = buf.read(pos, batch, now=time.time())
        if not got:
            break
        pos = got[-1].seq
        buf.ack(m.seq for m in got)
        n += len(got)
    dt = time.perf_counter() - t0
    buf.close()
    return {"messages": n, "seconds": dt, "msg_per_s": n / dt if dt else 0.0}


def reopen(path: Path, mode: Durability) -> dict[str, Any]:
    t0 = time.perf_counter()
    buf = Buffer.open(path, durability=mode, **CAP)
    dt = time.perf_counter() - t0
    depth = buf.statistics(time.time()).depth_messages
    buf.close()
    return {"depth": depth, "seconds": dt, "file_mb": path.stat().st_size / 1e6}


async def store_ingest(path: Path, mode: Durability, count: int, producers: int, payload: int) -> dict[str, Any]:
    per = count // producers
    async with Store.open(path, durability=mode, **CAP) as s:
        c0 = s.statistics().commits

        async def producer(k: int) -> None:
            rec = Record(f"telemetry/p1/d{k:04d}/t", b"x" * payload, device=f"d{k}")
            for _ in range(per):
                await s.append(rec)

        t0 = time.perf_counter()
        await asyncio.gather(*(producer(k) for k in range(producers)))
        dt = time.perf_counter() - t0
        commits = s.statistics().commits - c0
    n = per * producers
    return {"messages": n, "seconds": dt, "msg_per_s": n / dt, "commits": commits, "producers": producers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--single", type=int, default=2000, help="records for the one-per-transaction run")
    ap.add_argument("--producers", type=int, default=500)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--report",
        action="store_true",
        help=f"write {RESULTS.name} beside the other results and the buffer section of BENCHMARKS.md",
    )
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgemq-bench-", dir=args.dir or Path.cwd()))
    recs = records(args.count, args.payload)
    results: dict[str, Any] = {
        "method": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "os": platform.platform(),
            "nproc": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "modes": {},
    }
    try:
        for mode in MODES:
            r: dict[str, Any] = {}
            r["core_ingest"] = core_ingest(work / f"{mode}.db", mode, recs, args.batch)
            r["reopen"] = reopen(work / f"{mode}.db", mode)
            r["drain"] = drain(work / f"{mode}.db", mode, args.batch)
            r["core_single"] = core_ingest(work / f"{mode}-single.db", mode, recs[: args.single], 1)
            r["store_ingest"] = asyncio.run(
                store_ingest(work / f"{mode}-store.db", mode, args.count, args.producers, args.payload)
            )
            results["modes"][mode] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)

    header = (
        f"{'mode':8} {'core batch':>12} {'core 1/txn':>11} {'store':>10} {'store txns':>10} {'drain':>10} {'reopen':>8}"
    )
    print(header)
    print("-" * len(header))
    for mode, r in results["modes"].items():
        print(
            f"{mode:8} {r['core_ingest']['msg_per_s']:>10,.0f}/s {r['core_single']['msg_per_s']:>9,.0f}/s"
            f" {r['store_ingest']['msg_per_s']:>8,.0f}/s {r['store_ingest']['commits']:>10,}"
            f" {r['drain']['msg_per_s']:>8,.0f}/s {r['reopen']['seconds']:>7.2f}s"
        )
    text = json.dumps(results, indent=2)
    if args.report:
        RESULTS.write_text(text + "\n")
        replace_section("buffer", markdown(results))
        print(f"wrote {RESULTS} and the buffer section of BENCHMARKS.md")
    if args.out:
        args.out.write_text(text + "\n")
    elif not args.report:
        print(text)


def markdown(results: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: one row per durability mode."""
    meth, mach = results["method"], results["machine"]
    lines = [
        "## The SQLite buffer alone (issue 4, `make bench-buffer`)",
        "",
        f"Measured {results['date']} by `benchmarks/buffer_bench.py`: {meth['count']:,} records of "
        f"{meth['payload']}-byte payloads on 20-byte topics, one fresh file per durability mode, on the "
        f"disk of the working directory. Machine: {mach['nproc']} CPUs, CPython {mach['python']}, "
        f"SQLite {mach['sqlite']}, {mach['os']}; load average at start {mach['loadavg_start']} "
        "(shared machine: figures are lower bounds).",
        "",
        "| durability | core ingest, batches of "
        f"{meth['batch']:,} (msg/s) | core ingest, 1 per transaction (msg/s) | Store.append, "
        f"{meth['producers']} producers, group commit (msg/s) | commits for it | drain read+ack (msg/s) "
        "| reopen incl. quick_check (s) | file bytes per message |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, r in results["modes"].items():
        per_msg = r["reopen"]["file_mb"] * 1e6 / r["reopen"]["depth"] if r["reopen"]["depth"] else 0.0
        lines.append(
            f"| {mode} | {r['core_ingest']['msg_per_s']:,.0f} | {r['core_single']['msg_per_s']:,.0f} | "
            f"{r['store_ingest']['msg_per_s']:,.0f} | {r['store_ingest']['commits']:,} | "
            f"{r['drain']['msg_per_s']:,.0f} | {r['reopen']['seconds']:.2f} | {per_msg:,.0f} |"
        )
    lines += [
        "",
        "Method: *core ingest* is `Buffer.append_many` in one transaction per batch; *1 per transaction* "
        f"is the same for {meth['single']:,} records one at a time (what group commit saves); "
        "*Store.append* is the real path (asyncio producers, one writer thread, group commit window), "
        "*drain* reads batches in order and acknowledges each; *reopen* opens the full file including "
        "`PRAGMA quick_check`. File bytes per message is the file size over the rows in it, what "
        "`simulations/capacity.py` uses to size disks. Raw data: `benchmarks/results/buffer.json`.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
