"""The benchmark scenarios of issue 9; each run starts fresh broker processes and stops them.

Every function takes a broker kind ('edgemq', 'edgemq-mosq' = our edge node with Mosquitto
as the cloud, 'mosquitto', or 'loadgen' = one Mosquitto
alone, to show the load generator's ceiling) and returns one JSON-able dict. Runs are
bounded: a message budget and a wall-clock window, both in ``Params``.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    PROBE_TOPIC,
    Accepted,
    Blast,
    Paced,
    Sub,
    blast_files,
    cpu_seconds,
    make_topology,
    open_idle,
    rss_mb,
)


@dataclass
class Params:
    window_s: float = 5.0  # measured window of a throughput run
    max_messages: int = 200_000  # message budget of a throughput run
    latency_s: float = 8.0  # duration of a fixed-rate run
    warmup_s: float = 1.0  # fixed-rate samples sent earlier than this are ignored
    drain_messages: int = 100_000
    drain_publishers: int = 10
    drain_cap_s: float = 600.0
    #: edgemq kinds: write the backlog straight into the edge node's SQLite buffer instead of
    #: publishing it (the amqtt edge ingests ~600 QoS 1 msg/s here: 1,000,000 would take ~30 min).
    drain_prefill: bool = False
    overload_s: float = 30.0
    overload_grace_s: float = 30.0
    probe_rate: float = 50.0  # msg/s of the light publisher whose latency is "admitted latency"
    idle_connections: int = 2_000


def pct(sorted_vals: list[float], p: float) -> float:
    """Nearest-rank percentile; ``inf`` entries stand for messages that never arrived."""
    if not sorted_vals:
        return math.nan
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def _wait(subs: list[Sub], total: int, window_s: float, first_timeout: float = 30.0, tick: Any = None) -> None:
    t0 = time.monotonic()
    first = None
    while True:
        if tick is not None:
            tick()
        counts = [s.count() for s in subs]
        now = time.monotonic()
        if min(counts) >= total:
            return
        if first is None and max(counts) > 0:
            first = now
        if first is not None and now - first > window_s + 0.5:
            return
        if first is None and now - t0 > first_timeout:
            return
        time.sleep(0.1)


def throughput(arrivals: list[tuple[int, int, int]], window_s: float, expected: int) -> dict[str, Any]:
    """Rate over the window that starts at the first arrival (or over all, if all came sooner)."""
    if len(arrivals) < 2:
        return {"received": len(arrivals), "msg_per_s": 0.0}
    t_first = arrivals[0][0]
    limit = t_first + int(window_s * 1e9)
    inside = [a for a in arrivals if a[0] <= limit]
    seqs = [a[1] for a in arrivals]
    if len(arrivals) >= expected:
        span = (arrivals[-1][0] - t_first) / 1e9
        rate = (len(arrivals) - 1) / span if span > 0 else 0.0
    else:
        span = window_s
        rate = len(inside) / window_s
    return {
        "received": len(arrivals),
        "unique": len(set(seqs)),
        "in_window": len(inside),
        "span_s": span,
        "msg_per_s": rate,
    }


def run_blast(kind: str, work: Path, *, qos: int, n_pubs: int, at: str, p: Params) -> dict[str, Any]:
    """Scenarios 1 and 2 (and the load generator's ceiling): publishers flat out."""
    per_pub = max(1, p.max_messages // n_pubs)
    total = per_pub * n_pubs
    files = blast_files(work.parent, n_pubs, per_pub)
    with make_topology(kind, work).start() as topo:
        port = topo.edge_port if at == "edge" else topo.cloud_port
        sub = Sub(work, at, port, qos if at == "edge" else 1)
        acc = Accepted(topo, work)
        procs = topo.edge_procs() + topo.cloud_procs()
        edge_cpu0, cloud_cpu0 = cpu_seconds(topo.edge_procs()), cpu_seconds(topo.cloud_procs())
        t0 = time.monotonic()
        blast = Blast(files, topo.edge_port, qos, hold_s=p.window_s + 120)
        try:
            _wait([sub], total, p.window_s, tick=acc.sample)
            time.sleep(1.2)
            acc.sample()
            elapsed = time.monotonic() - t0
            edge_cpu = cpu_seconds(topo.edge_procs()) - edge_cpu0
            cloud_cpu = cpu_seconds(topo.cloud_procs()) - cloud_cpu0
            rss = rss_mb(procs)
        finally:
            blast.close()
            sub.close()
            acc.close()
    res = throughput(sub.arrivals(), p.window_s, total)
    res["accepted_msg_per_s"] = acc.rate(p.window_s)
    accepted = acc.total()
    if accepted:
        res["accepted_total"] = accepted
        res["edge_cpu_us_per_accepted"] = edge_cpu / accepted * 1e6
    got = max(1, sub.count())
    res.update(
        sent_budget=total,
        elapsed_s=elapsed,
        rss_mb=rss,
        edge_cpu_us_per_msg=edge_cpu / got * 1e6,
        cloud_cpu_us_per_msg=cloud_cpu / got * 1e6,
    )
    return res


def latency_stats(
    arrivals: list[tuple[int, int, int]], sent: int, rate: float, warmup_s: float, t_sent0_ns: int | None = None
) -> dict[str, Any]:
    """Latency of every message sent after the warm-up; one that never arrived counts as infinite."""
    skip = int(rate * warmup_s)
    by_seq = {}
    for arr, seq, sent_ns in arrivals:
        by_seq.setdefault(seq, (arr - sent_ns) / 1e6)
    lats = sorted(by_seq.get(s, math.inf) for s in range(skip, sent))
    missing = sum(1 for x in lats if x == math.inf)
    return {
        "samples": len(lats),
        "missing": missing,
        "p50_ms": pct(lats, 50),
        "p99_ms": pct(lats, 99),
        "p999_ms": pct(lats, 99.9),
        "max_ms": lats[-1] if lats else math.nan,
    }


def run_paced(
    kind: str,
    work: Path,
    *,
    rate: float,
    qos: int,
    subs_at: tuple[str, ...],
    p: Params,
    duration_s: float | None = None,
) -> dict[str, Any]:
    """Scenario 3 and CPU per message: one publisher at a fixed offered rate."""
    duration = duration_s or p.latency_s
    with make_topology(kind, work).start() as topo:
        subs = {at: Sub(work, at, topo.edge_port if at == "edge" else topo.cloud_port, 1) for at in subs_at}
        edge_cpu0, cloud_cpu0 = cpu_seconds(topo.edge_procs()), cpu_seconds(topo.cloud_procs())
        pub = Paced(topo.edge_port, qos, rate, duration)
        try:
            pub.done.wait(duration + 60)
            grace = max(5.0, duration)
            end = time.monotonic() + grace
            while time.monotonic() < end and min(s.count() for s in subs.values()) < pub.sent:
                time.sleep(0.1)
            edge_cpu = cpu_seconds(topo.edge_procs()) - edge_cpu0
            cloud_cpu = cpu_seconds(topo.cloud_procs()) - cloud_cpu0
            rss = rss_mb(topo.edge_procs())
        finally:
            pub.close()
            for s in subs.values():
                s.close()
    res: dict[str, Any] = {"offered": rate, "sent": pub.sent, "publisher_blocked_s": pub.blocked_s, "edge_rss_mb": rss}
    for at, s in subs.items():
        arr = s.arrivals()
        res[at] = latency_stats(arr, pub.sent, rate, p.warmup_s)
        res[at]["received"] = len(arr)
    delivered = max(1, len(subs[subs_at[-1]].arrivals()))
    res["edge_cpu_us_per_msg"] = edge_cpu / delivered * 1e6
    res["cloud_cpu_us_per_msg"] = cloud_cpu / delivered * 1e6
    res["edge_cpu_share"] = edge_cpu / (duration + grace)
    return res


def run_drain(
    kind: str, work: Path, *, p: Params, profile: Path | None = None, topo_kw: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Scenario 4: fill a backlog while the cloud is down, start the cloud, time the drain.

    ``profile``: record the edge process with py-spy (raw collapsed stacks) during the drain.
    """
    n_pubs = p.drain_publishers
    per_pub = max(1, p.drain_messages // n_pubs)
    total = per_pub * n_pubs
    prefill = p.drain_prefill and kind.startswith("edgemq")
    files = [] if prefill else blast_files(work.parent, n_pubs, per_pub)
    topo = make_topology(kind, work, **(topo_kw or {}))
    t0 = time.monotonic()
    if prefill:
        prefill_buffer(topo, n_pubs, per_pub)  # type: ignore[arg-type]
    topo.start(cloud=False)
    try:
        edge_sub = Sub(work, "edge", topo.edge_port, 1)
        blast = Blast(files, topo.edge_port, 1, hold_s=p.drain_cap_s + 60)
        last, last_change = 0, time.monotonic()

        def backlog() -> int:
            # Mosquitto: a local subscriber has every message (each one was accepted and queued
            # for the bridge). edgemq: the buffer's own depth (its local delivery can lag far behind).
            if kind.startswith("edgemq"):
                return int((topo.stats().get("buffer") or {}).get("depth_messages") or 0)
            return edge_sub.count()

        while True:
            c = backlog()
            now = time.monotonic()
            if c != last:
                last, last_change = c, now
            if c >= total or now - last_change > 30 or now - t0 > p.drain_cap_s:
                break
            time.sleep(0.2)
        fill_s = time.monotonic() - t0
        blast.close()
        edge_sub.close()
        time.sleep(1.5)
        filled = backlog()
        stats_before = topo.stats()
        edge_rss = rss_mb(topo.edge_procs())
        cloud_sub = Sub(work, "cloud", topo.cloud_port, 1, retry=True, ready=False)
        t_start_ns = time.time_ns()
        topo.start_cloud()
        cloud_sub.wait_ready()
        cpu0 = cpu_seconds(topo.edge_procs())
        spy = None
        if profile is not None and topo.edge is not None:
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [
                    exe,
                    "record",
                    "--format",
                    "raw",
                    "-o",
                    str(profile),
                    "--pid",
                    str(topo.edge.pid),
                    "--rate",
                    "100",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        last, last_change = 0, time.monotonic()
        t1 = time.monotonic()
        while True:
            c = cloud_sub.count()
            now = time.monotonic()
            if c != last:
                last, last_change = c, now
            if c >= filled or now - last_change > 30 or now - t1 > p.drain_cap_s:
                break
            time.sleep(0.2)
        edge_cpu = cpu_seconds(topo.edge_procs()) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(timeout=30)
        cloud_sub.close()
    finally:
        topo.stop()
    arr = cloud_sub.arrivals()
    res: dict[str, Any] = {
        "backlog": total,
        "filled": filled,
        "prefilled": prefill,
        "fill_s": fill_s,
        "fill_msg_per_s": filled / fill_s,
        "edge_rss_mb_with_backlog": edge_rss,
        "received": len(arr),
        "unique": len({a[1] for a in arr}),
    }
    if arr:
        t_first, t_last = arr[0][0], arr[-1][0]
        res.update(
            first_after_start_s=(t_first - t_start_ns) / 1e9,
            drain_s_from_cloud_start=(t_last - t_start_ns) / 1e9,
            drain_msg_per_s=(len(arr) - 1) / max(1e-9, (t_last - t_first) / 1e9),
            edge_cpu_us_per_msg=edge_cpu / len(arr) * 1e6,
            timeline=_timeline([a[0] for a in arr], t_start_ns),
        )
    if stats_before.get("buffer"):
        res["edgemq_buffer_before"] = {
            k: stats_before["buffer"].get(k) for k in ("depth_messages", "depth_bytes", "dropped")
        }
    return res


def prefill_buffer(topo: Any, n_pubs: int, per_pub: int) -> None:
    """Write the drain backlog into the edge node's buffer file, as ``n_pubs`` publishers would have."""
    from harness import line, topic_of

    from bridge.buffer import Buffer, Record  # the benchmark's only use of edgemq internals

    path = topo.work / "run" / "data" / "plant-1" / "a1.sqlite3"
    buf = Buffer.open(path, max_messages=10_000_000, max_bytes=10**11)
    try:
        now = time.time()
        for base in range(0, per_pub, 1000):  # interleave publishers like concurrent ones
            recs = [
                Record(topic=topic_of(i), payload=line(i * per_pub + k)[:-1], device=f"plant-1/dev-{i:03d}")
                for k in range(base, min(base + 1000, per_pub))
                for i in range(n_pubs)
            ]
            buf.append_many(recs, now)
    finally:
        buf.close()


def _timeline(ts_ns: list[int], t0_ns: int, buckets: int = 60) -> list[tuple[float, int]]:
    """Cumulative arrivals at up to ``buckets`` points, for plots."""
    if not ts_ns:
        return []
    step = max(1, len(ts_ns) // buckets)
    pts = [((ts_ns[i] - t0_ns) / 1e9, i + 1) for i in range(0, len(ts_ns), step)]
    pts.append(((ts_ns[-1] - t0_ns) / 1e9, len(ts_ns)))
    return pts


def run_overload(kind: str, work: Path, *, rate: float, p: Params) -> dict[str, Any]:
    """Scenario 5: QoS 0 offered at a fixed rate (2x edgemq's ingest capacity) for a bounded time."""
    with make_topology(kind, work).start() as topo:
        subs = {"edge": Sub(work, "edge", topo.edge_port, 0), "cloud": Sub(work, "cloud", topo.cloud_port, 1)}
        # Latency of admitted messages: a second, light publisher on its own connection and topic.
        # Its socket is never backed up, so the broker reads each of its messages as it comes and
        # send -> delivery is what the broker adds while overloaded; the loaded publisher's
        # latency also counts the time its messages wait in its own client and socket (pushback).
        probe_sub = Sub(work, "probe", topo.edge_port, 0, topic=PROBE_TOPIC)
        samples = []
        t0 = time.monotonic()
        pub = Paced(topo.edge_port, 0, rate, p.overload_s)
        probe = Paced(topo.edge_port, 0, p.probe_rate, p.overload_s, pub_index=1, topic=PROBE_TOPIC)
        pub_ps = None
        try:
            import psutil

            pub_ps = psutil.Process(pub.proc.pid)
            end = t0 + p.overload_s + p.overload_grace_s
            phase_end = t0 + p.overload_s
            while time.monotonic() < end:
                now = time.monotonic()
                st = topo.stats()
                samples.append(
                    {
                        "t": now - t0,
                        "edge_rss_mb": rss_mb(topo.edge_procs()),
                        "cloud_rss_mb": rss_mb(topo.cloud_procs()),
                        "pub_rss_mb": rss_mb([pub_ps]),
                        "edge_rx": subs["edge"].count(),
                        "cloud_rx": subs["cloud"].count(),
                        "sent": pub.sent,
                        "buffer_depth": (st.get("buffer") or {}).get("depth_messages"),
                    }
                )
                if now > phase_end and pub.done.is_set() and subs["cloud"].count() >= pub.sent:
                    break
                time.sleep(0.5)
            final_stats = topo.stats()
        finally:
            pub.close()
            probe.close()
            for s in (*subs.values(), probe_sub):
                s.close()
    res: dict[str, Any] = {
        "offered": rate,
        "duration_s": p.overload_s,
        "sent": pub.sent,
        "publisher_blocked_s": pub.blocked_s,
        "samples": samples,
    }
    in_phase = [s for s in samples if s["t"] <= p.overload_s + 0.5]
    res["edge_rss_mb_max"] = max((s["edge_rss_mb"] for s in samples), default=0)
    res["edge_rss_mb_start"] = samples[0]["edge_rss_mb"] if samples else 0
    res["pub_rss_mb_max"] = max((s["pub_rss_mb"] for s in samples), default=0)
    for at, s in subs.items():
        arr = s.arrivals()
        res[at] = latency_stats(arr, pub.sent, rate, p.warmup_s)
        res[at]["received"] = len(arr)
        res[at]["received_during_load"] = in_phase[-1][f"{at}_rx"] if in_phase else 0
    res["probe"] = latency_stats(probe_sub.arrivals(), probe.sent, p.probe_rate, p.warmup_s)
    res["probe"]["received"] = len(probe_sub.arrivals())
    res["probe"]["rate"] = p.probe_rate
    if final_stats.get("buffer"):
        b = final_stats["buffer"]
        res["edgemq_buffer"] = {k: b.get(k) for k in ("depth_messages", "dropped", "peak_depth_messages")}
        res["edgemq_append_failures"] = final_stats.get("append_failures")
    return res


def run_idle(kind: str, work: Path, *, p: Params) -> dict[str, Any]:
    """Scenario 6: N idle MQTT connections to the edge broker; RSS per connection."""
    with make_topology(kind, work).start() as topo:
        time.sleep(2.0)
        before = rss_mb(topo.edge_procs())

        async def hold() -> tuple[int, float, int, float]:
            conns, secs, failed = await open_idle(topo.edge_port, p.idle_connections)
            await asyncio.sleep(3.0)
            after = rss_mb(topo.edge_procs())
            for _, w in conns:
                w.close()
            return len(conns), secs, failed, after

        n, secs, failed, after = asyncio.run(hold())
    return {
        "connections": n,
        "failed": failed,
        "connect_s": secs,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "kb_per_connection": (after - before) * 1000 / max(1, n),
    }
