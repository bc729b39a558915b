"""Scenario: the uplink of a whole site is cut for minutes under a running fleet, then restored.

Brings up real processes on free loopback ports in a temporary run directory: the
embedded cloud broker and site plant-1 with three edge nodes. The edge nodes reach
the cloud through a TCP proxy (the site's uplink, as a cable); a fleet of devices
(default 1,000, QoS 1) publishes through the whole run. After a steady phase the
proxy drops every uplink connection and refuses new ones for ``--outage-s``
seconds, then accepts again. The fleet keeps publishing during the drain.

Sampled every second from each edge node's stats file (``run/stats/plant-1.aN.json``,
written by the node itself): buffer depth (messages), age of the oldest buffered
message, link state, and the buffer's counters. At the end, every message
acknowledged to a device is looked up at a cloud subscriber that was connected
directly to the cloud for the whole run: loss is counted, not assumed.

Writes ``simulations/out/outage.md`` (figures, accounting per broker) and
``simulations/out/outage.png`` (depth and age over time per broker). Run with
``make simulate-outage`` (``--quick`` for a one-minute smoke). Bounded in time;
every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.config import ClusterConfig, load
from broker.probe import wait_until_answers
from devices.fleet import Ack, FleetConfig, FleetStats, run_fleet
from simulations.common import OUT, CloudCounter, Procs, cluster_toml, free_port
from tests.integration.netproxy import TcpProxy

log = logging.getLogger("simulations.outage")


@dataclass(frozen=True)
class Scenario:
    devices: int = 1000
    rate: float = 0.2  # messages/s per device: 200 msg/s for the site by default
    seed: int = 11
    steady_s: float = 20.0
    outage_s: float = 180.0
    max_drain_s: float = 600.0  # give up waiting for the drain after this long
    tail_s: float = 5.0  # live traffic after the drain, before the fleet stops


@dataclass
class Sample:
    t: float
    depth: dict[str, int]
    age: dict[str, float]
    link: dict[str, str]


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)


def _read_stats(cfg: ClusterConfig, broker: str) -> dict[str, Any] | None:
    path = cfg.run_dir / "stats" / f"plant-1.{broker}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _sample(cfg: ClusterConfig, brokers: list[str], t: float) -> Sample:
    s = Sample(t, {}, {}, {})
    for b in brokers:
        data = _read_stats(cfg, b)
        if data is None:
            continue
        buf = data.get("buffer") or {}
        s.depth[b] = int(buf.get("depth_messages", 0))
        s.age[b] = float(buf.get("oldest_age_s") or 0.0)
        s.link[b] = str((data.get("uplink") or {}).get("state", "?"))
    return s


async def _drive(sc: Scenario, cfg: ClusterConfig, proxy: TcpProxy, run: Run) -> None:
    """Steady phase, cut, outage, restore, then wait for every buffer to come back to its live level."""
    brokers = [b.id for b in cfg.sites[0].brokers]
    t0 = time.monotonic()
    run.events["start"] = t0

    async def sample_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            run.samples.append(_sample(cfg, brokers, time.monotonic()))
            await asyncio.sleep(1.0)

    await sample_for(sc.steady_s)
    live = max((max(s.depth.values(), default=0) for s in run.samples[len(run.samples) // 2 :]), default=0)
    await asyncio.to_thread(proxy.cut)
    run.events["cut"] = time.monotonic()
    log.info("uplink cut for %.0f s (live buffer depth before the cut: %d)", sc.outage_s, live)
    await sample_for(sc.outage_s)
    await asyncio.to_thread(proxy.restore)
    run.events["restore"] = time.monotonic()
    log.info("uplink restored; draining")
    # Drained: every broker back to the depth it had with the link up (plus one second of traffic);
    # depth only falls by forwarding or by counted drops (the report shows both).
    threshold = live + max(10, int(sc.devices * sc.rate / len(brokers)))
    drained: dict[str, float] = {}
    deadline = time.monotonic() + sc.max_drain_s
    while len(drained) < len(brokers) and time.monotonic() < deadline:
        s = _sample(cfg, brokers, time.monotonic())
        run.samples.append(s)
        for b in brokers:
            if b not in drained and b in s.depth and s.depth[b] <= threshold:
                drained[b] = s.t
                log.info("%s drained after %.1f s", b, s.t - run.events["restore"])
        await asyncio.sleep(0.5)
    for b, t in drained.items():
        run.events[f"drained.{b}"] = t
    await sample_for(sc.tail_s)


def run(sc: Scenario) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgemq-outage-") as tmpdir:
        tmp = Path(tmpdir)
        cloud_port, uplink_port, ports = free_port(), free_port(), [free_port() for _ in range(3)]
        # Two views of one cluster: the cloud listens on cloud_port; the edges dial the proxy.
        (tmp / "cloud.toml").write_text(cluster_toml(tmp / "run", cloud_port, ports))
        edges = tmp / "cluster.toml"
        edges.write_text(cluster_toml(tmp / "run", uplink_port, ports))
        cfg = load(edges)
        procs = Procs(tmp, edges)
        proxy = TcpProxy(uplink_port, cloud_port)
        cloud: CloudCounter | None = None
        try:
            procs.config = tmp / "cloud.toml"
            procs.start("cloud", ["cloud"])
            procs.config = edges
            if not wait_until_answers("127.0.0.1", cloud_port, 30):
                raise RuntimeError(f"the cloud broker did not start; logs in {tmp}")
            cloud = CloudCounter(cloud_port)
            for b in cfg.sites[0].brokers:
                procs.start(f"plant-1.{b.id}", ["edge", "--broker", f"plant-1/{b.id}"])
            for b in cfg.sites[0].brokers:
                if not wait_until_answers(b.host, b.port, 30):
                    raise RuntimeError(f"{b.id} did not start; logs in {tmp}")
            return asyncio.run(_fleet_run(sc, cfg, proxy, cloud))
        finally:
            if cloud is not None:
                cloud.close()
            procs.stop_all()
            proxy.close()


async def _fleet_run(sc: Scenario, cfg: ClusterConfig, proxy: TcpProxy, cloud: CloudCounter) -> Path:
    fleet_cfg = FleetConfig(
        site=cfg.sites[0],
        devices=sc.devices,
        rate=sc.rate,
        seed=sc.seed,
        duration_s=sc.steady_s + sc.outage_s + sc.max_drain_s + sc.tail_s + 60,
        connect_batch=100,
        reconnect_min_s=0.2,
        reconnect_max_s=2.0,
        progress_interval_s=1.0,
    )
    acks: list[Ack] = []
    fleet_samples: list[tuple[float, int, int]] = []
    stop = asyncio.Event()

    def progress(s: FleetStats) -> None:
        fleet_samples.append((time.monotonic(), s.connected, s.acked))

    fleet = asyncio.create_task(run_fleet(fleet_cfg, progress, on_ack=acks.append, stop=stop))
    # Wait for the fleet to be connected before the clock of the scenario starts.
    deadline = time.monotonic() + 120
    while (not fleet_samples or fleet_samples[-1][1] < sc.devices) and time.monotonic() < deadline:
        if fleet.done():
            await fleet  # raises what stopped it
        await asyncio.sleep(0.5)
    log.info("fleet connected: %d devices", fleet_samples[-1][1] if fleet_samples else 0)
    result = Run()
    try:
        await _drive(sc, cfg, proxy, result)
    finally:
        stop.set()
        await fleet
    result.events["fleet_stopped"] = time.monotonic()
    deadline = time.monotonic() + 120
    while cloud.missing(acks) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # the stats files catch up with the last acknowledgements
    for b in cfg.sites[0].brokers:
        result.final[b.id] = _read_stats(cfg, b.id) or {}
    return _report(sc, result, acks, cloud)


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} s"


def _report(sc: Scenario, run: Run, acks: list[Ack], cloud: CloudCounter) -> Path:
    brokers = sorted(run.final)
    ev = run.events
    missing = cloud.missing(acks)
    rows = []
    for b in brokers:
        depths = [s.depth.get(b, 0) for s in run.samples]
        ages = [s.age.get(b, 0.0) for s in run.samples]
        drained = ev.get(f"drained.{b}")
        buf = run.final[b].get("buffer") or {}
        dropped = sum((buf.get("dropped") or {}).values())
        accepted, forwarded, depth = buf.get("accepted", 0), buf.get("forwarded", 0), buf.get("depth_messages", 0)
        balance = "balances" if accepted == forwarded + dropped + depth else "**does not balance**"
        rows.append(
            f"| {b} | {max(depths):,} | {max(ages):,.1f} s | "
            f"{_fmt_s(None if drained is None else drained - ev['restore'])} | "
            f"{accepted:,} = {forwarded:,} + {dropped:,} + {depth:,} ({balance}) |"
        )
    png = OUT / "outage.png"
    _plot(run, brokers, png, sc)
    drain_times = [ev[f"drained.{b}"] - ev["restore"] for b in brokers if f"drained.{b}" in ev]
    backlog = sum(max(s.depth.get(b, 0) for s in run.samples) for b in brokers)
    md = OUT / "outage.md"
    md.write_text(
        "\n".join(
            [
                "# Simulation: the uplink of a site is cut for minutes under a fleet",
                "",
                f"Generated by `make simulate-outage` (simulations/outage.py) on {time.strftime('%Y-%m-%d %H:%M')}.",
                "",
                f"Real processes on loopback: the embedded cloud broker and site plant-1 with three edge nodes "
                f"(a1, a2, a3). The edge nodes reach the cloud through a TCP proxy. {sc.devices:,} devices "
                f"(seed {sc.seed}) publish QoS 1 telemetry at {sc.rate:g} msg/s each "
                f"({sc.devices * sc.rate:,.0f} msg/s for the site). After {sc.steady_s:g} s the proxy drops every "
                f"uplink connection and refuses new ones for {sc.outage_s:g} s; then it accepts again. The fleet "
                "keeps publishing throughout, so the drain competes with live traffic.",
                "",
                "![buffer depth and oldest age per broker](outage.png)",
                "",
                "| broker | peak depth (messages) | peak age of the oldest message | drain time after restore | "
                "accepted = forwarded + dropped + buffered |",
                "| --- | ---: | ---: | ---: | --- |",
                *rows,
                "",
                "| measure | value |",
                "| --- | --- |",
                f"| backlog at the end of the outage (sum of peaks) | {backlog:,} messages |",
                f"| slowest broker's drain time | {_fmt_s(max(drain_times) if drain_times else None)} "
                f"({len(drain_times)} of {len(brokers)} drained within {sc.max_drain_s:g} s) |",
                f"| site drain rate (backlog / slowest drain time, on top of live traffic) | "
                f"{(backlog / max(drain_times)) if drain_times and max(drain_times) > 0 else 0:,.0f} msg/s |",
                f"| messages acknowledged to devices | {len(acks):,} |",
                f"| acknowledged messages missing at the cloud | **{missing:,}** |",
                f"| arrivals at the cloud (duplicates included) / distinct | {cloud.total():,} / "
                f"{cloud.distinct():,} |",
                "",
                "Drain time is from the restore to the first sample (every 0.5 s) where the broker's buffer is "
                "back to the depth it had with the link up (plus one second of its live "
                "traffic). Missing counts every acknowledged message (topic and payload, which carries the "
                "device's sequence number) not seen by a subscriber connected directly to the cloud for the "
                "whole run. The accounting row reads each broker's own counters at the end; dropped is the "
                "sum over reasons (overflow, expired, rejected); accepted also counts the devices' "
                "`status/...` presence messages, which are bridged up like telemetry.",
                "",
            ]
        )
    )
    (OUT / "outage.json").write_text(
        json.dumps(
            {
                "scenario": sc.__dict__,
                "events": {k: v - ev["start"] for k, v in ev.items()},
                "acked": len(acks),
                "missing": missing,
                "arrivals": cloud.total(),
                "distinct": cloud.distinct(),
                "samples": [
                    {"t": s.t - ev["start"], "depth": s.depth, "age": s.age, "link": s.link} for s in run.samples
                ],
            },
            indent=1,
        )
    )
    return md


def _plot(run: Run, brokers: list[str], path: Path, sc: Scenario) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = run.events["start"]
    ts = [s.t - t0 for s in run.samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    styles = ["-", "--", ":"]
    for i, b in enumerate(brokers):
        ax.plot(ts, [s.depth.get(b, 0) for s in run.samples], label=b, linestyle=styles[i % 3])
        ax2.plot(ts, [s.age.get(b, 0.0) for s in run.samples], label=b, linestyle=styles[i % 3])
    for a in (ax, ax2):
        a.axvspan(run.events["cut"] - t0, run.events["restore"] - t0, color="red", alpha=0.08, label=None)
        a.grid(alpha=0.3)
    ax.set_ylabel("buffered messages")
    ax.set_title(f"{sc.devices:,} devices x {sc.rate:g} msg/s; uplink cut for {sc.outage_s:g} s (shaded)")
    ax.legend(loc="upper left")
    ax2.set_ylabel("age of oldest (s)")
    ax2.set_xlabel("seconds since the steady phase started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=Scenario.devices)
    parser.add_argument("--rate", type=float, default=Scenario.rate, help="messages/s per device")
    parser.add_argument("--outage-s", type=float, default=Scenario.outage_s)
    parser.add_argument("--seed", type=int, default=Scenario.seed)
    parser.add_argument("--quick", action="store_true", help="200 devices, 30 s outage: a smoke run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("devices.fleet.mqtt").setLevel(logging.ERROR)
    sc = Scenario(devices=args.devices, rate=args.rate, outage_s=args.outage_s, seed=args.seed)
    if args.quick:
        sc = Scenario(devices=200, rate=args.rate, outage_s=30.0, steady_s=10.0, seed=args.seed)
    md = run(sc)
    print(md.read_text())
    print(json.dumps({"report": str(md), "plot": str(OUT / "outage.png")}))


if __name__ == "__main__":
    main()
