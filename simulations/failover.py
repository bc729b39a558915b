"""Scenario: a broker of a site crashes under a running fleet and comes back.

Brings up real processes (the embedded cloud broker and a site of three edge
nodes, ``python -m edgemq broker ...``, on free loopback ports, in a temporary
run directory), runs a seeded device fleet in this process, kills one edge node
with SIGKILL, restarts it, and stops everything. Writes
``simulations/out/failover.md`` with the measured failover and return times,
delivery counts at the cloud, and a plot of devices per broker over time
(``simulations/out/failover.png``).

Run with ``make simulate-failover`` (or ``python -m simulations.failover``).
Bounded in time (about a minute); every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from broker.config import ClusterConfig
from broker.probe import wait_until_answers
from devices.fleet import Ack, FleetConfig, FleetStats, Move, run_fleet
from devices.placement import preference
from simulations.common import OUT, CloudCounter, Procs, cluster_toml, free_port

log = logging.getLogger("simulations.failover")


@dataclass(frozen=True)
class Scenario:
    devices: int = 60
    rate: float = 2.0
    seed: int = 7
    steady_s: float = 8.0  # before the kill
    down_s: float = 12.0  # the broker is dead this long
    after_s: float = 20.0  # after the restart
    hold_down_s: float = 5.0
    probe_interval_s: float = 1.0


async def _scenario(sc: Scenario, procs: Procs, cluster: ClusterConfig, victim: str) -> dict[str, float]:
    """Kill the victim after the steady phase, restart it after the outage; return the event times."""
    site = cluster.sites[0]
    b = site.broker(victim)
    events: dict[str, float] = {}
    await asyncio.sleep(sc.steady_s)
    procs.kill(f"plant-1.{victim}")
    events["kill"] = time.monotonic()
    log.info("killed %s (SIGKILL)", victim)
    await asyncio.sleep(sc.down_s)
    procs.start(f"plant-1.{victim}", ["edge", "--broker", f"plant-1/{victim}"])
    if not await asyncio.to_thread(wait_until_answers, b.host, b.port, 30):
        raise RuntimeError(f"{victim} did not come back")
    events["restart"] = time.monotonic()
    log.info("restarted %s", victim)
    await asyncio.sleep(sc.after_s)
    return events


def run(sc: Scenario) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgemq-sim-") as tmpdir:
        tmp = Path(tmpdir)
        cloud_port, ports = free_port(), [free_port() for _ in range(3)]
        config = tmp / "cluster.toml"
        config.write_text(cluster_toml(tmp / "run", cloud_port, ports))
        from broker.config import load

        cluster = load(config)
        site = cluster.sites[0]
        procs = Procs(tmp, config)
        cloud: CloudCounter | None = None
        try:
            procs.start("cloud", ["cloud"])
            for b in site.brokers:
                procs.start(f"plant-1.{b.id}", ["edge", "--broker", f"plant-1/{b.id}"])
            for host, port in [("127.0.0.1", cloud_port)] + [(b.host, b.port) for b in site.brokers]:
                if not wait_until_answers(host, port, 30):
                    raise RuntimeError(f"{host}:{port} did not start; logs in {tmp}")
            cloud = CloudCounter(cloud_port)
            report = asyncio.run(_fleet_run(sc, procs, cluster, cloud))
        finally:
            if cloud is not None:
                cloud.close()
            procs.stop_all()
    return report


async def _fleet_run(sc: Scenario, procs: Procs, cluster: ClusterConfig, cloud: CloudCounter) -> Path:
    site = cluster.sites[0]
    owners = {f"dev-{i:04d}": [b.id for b in preference(site, f"dev-{i:04d}")] for i in range(1, sc.devices + 1)}
    victim = Counter(p[0] for p in owners.values()).most_common(1)[0][0]
    cfg = FleetConfig(
        site=site,
        devices=sc.devices,
        rate=sc.rate,
        seed=sc.seed,
        duration_s=sc.steady_s + sc.down_s + sc.after_s + 60,
        reconnect_min_s=0.2,
        reconnect_max_s=2.0,
        probe_interval_s=sc.probe_interval_s,
        probe_jitter=0.5,
        probe_timeout_s=1.0,
        hold_down_s=sc.hold_down_s,
        progress_interval_s=0.2,
    )
    samples: list[tuple[float, dict[str, int], int]] = []
    moves: list[Move] = []
    acks: list[Ack] = []
    stop = asyncio.Event()

    def progress(s: FleetStats) -> None:
        samples.append((time.monotonic(), dict(s.per_broker), s.acked))

    fleet = asyncio.create_task(run_fleet(cfg, progress, on_ack=acks.append, on_move=moves.append, stop=stop))
    t0 = time.monotonic()
    try:
        events = await _scenario(sc, procs, cluster, victim)
    finally:
        events_end = time.monotonic()
        stop.set()
        result = await fleet
    samples = [x for x in samples if x[0] <= events_end]  # not the fleet's own shutdown
    deadline = time.monotonic() + 60
    while cloud.missing(acks) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    victims = [d for d, p in owners.items() if p[0] == victim]
    failover = [
        min(m.at for m in moves if m.device == d and m.broker == owners[d][1] and m.at >= events["kill"])
        - events["kill"]
        for d in victims
        if any(m.device == d and m.broker == owners[d][1] for m in moves)
    ]
    back = [
        min(m.at for m in moves if m.device == d and m.broker == victim and m.at >= events["restart"])
        - events["restart"]
        for d in victims
        if any(m.device == d and m.broker == victim and m.at >= events["restart"] for m in moves)
    ]
    others_moved = sum(1 for r in result.devices if r.owner != victim and len(r.history) > 1)
    png = OUT / "failover.png"
    _plot(samples, t0, events, victim, sc, png)
    missing = cloud.missing(acks)
    md = OUT / "failover.md"
    md.write_text(
        "\n".join(
            [
                "# Simulation: a broker crashes under a fleet, and comes back",
                "",
                "Generated by `make simulate-failover` (simulations/failover.py) on "
                f"{time.strftime('%Y-%m-%d %H:%M')}.",
                "",
                "Real processes on loopback: the embedded cloud broker and site plant-1 with three edge nodes "
                f"(a1, a2, a3, equal weights). A fleet of {sc.devices} devices (seed {sc.seed}) publishes QoS 1 "
                f"telemetry at {sc.rate:g} msg/s each. After {sc.steady_s:g} s the edge node **{victim}** (owner of "
                f"{len(victims)} devices) is killed with SIGKILL; it is restarted {sc.down_s:g} s later; the run "
                f"ends {sc.after_s:g} s after the restart. Devices probe their owner every ~{sc.probe_interval_s:g} s "
                f"(±50% jitter) while away and return after a hold-down of {sc.hold_down_s:g} s.",
                "",
                "![devices per broker over time](failover.png)",
                "",
                "| measure | value |",
                "| --- | --- |",
                f"| devices of {victim} that failed over to their 2nd preference | {len(failover)} of {len(victims)} |",
                f"| failover time after kill -9 (median / max) | {_fmt(failover)} |",
                f"| devices back home after the restart | {len(back)} of {len(victims)} |",
                f"| return time after the restart (median / max; hold-down {sc.hold_down_s:g} s) | {_fmt(back)} |",
                f"| devices of other brokers that moved | {others_moved} |",
                f"| messages acknowledged to devices | {len(acks)} |",
                f"| acknowledged messages missing at the cloud | {missing} |",
                f"| arrivals at the cloud (duplicates included) | {cloud.total()} |",
                "",
                "Failover time is from the kill to the device's connection at its second preference (the "
                "first attempt follows a 0.1-0.2 s jittered pause, the owner refuses, the next broker is "
                "tried at once). Return time is from the restarted broker answering MQTT to the device's "
                "connection at home: hold-down plus up to one probe interval, by design.",
                "",
            ]
        )
    )
    return md


def _fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s / {max(xs):.2f} s" if xs else "-"


def _plot(
    samples: list[tuple[float, dict[str, int], int]],
    t0: float,
    events: dict[str, float],
    victim: str,
    sc: Scenario,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    brokers = sorted({b for _, per, _ in samples for b in per})
    ts = [t - t0 for t, _, _ in samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[3, 1])
    styles = ["-", "--", ":", "-."]
    for i, b in enumerate(brokers):  # dashes: lines that coincide stay visible
        ys = [per.get(b, 0) for _, per, _ in samples]
        ax.step(ts, ys, where="post", label=b, linewidth=2.5 - 0.5 * (i % 3), linestyle=styles[i % len(styles)])
    for name, colour in (("kill", "red"), ("restart", "green")):
        for a in (ax, ax2):
            a.axvline(events[name] - t0, color=colour, linestyle="--", linewidth=1)
        ax.text(
            events[name] - t0,
            ax.get_ylim()[1] * 0.95,
            f" {name} {victim}" if name == "kill" else f" {name}",
            color=colour,
        )
    ax.set_ylabel("devices connected")
    ax.set_title(f"{sc.devices} devices, site plant-1: {victim} killed, restarted; hold-down {sc.hold_down_s:g} s")
    ax.legend(loc="center right")
    ax.grid(alpha=0.3)
    rates = [0.0] + [(b[2] - a[2]) / (b[0] - a[0]) for a, b in pairwise(samples)]
    ax2.plot(ts, rates, color="black", linewidth=1)
    ax2.set_ylabel("acks/s")
    ax2.set_xlabel("seconds since the fleet started")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=Scenario.devices)
    parser.add_argument("--seed", type=int, default=Scenario.seed)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("devices.fleet.mqtt").setLevel(logging.ERROR)
    md = run(Scenario(devices=args.devices, seed=args.seed))
    print(md.read_text())
    print(f"report: {md}")
    print(json.dumps({"report": str(md), "plot": str(OUT / "failover.png")}))


if __name__ == "__main__":
    main()
