"""Internet scale, by model: what 100 sites x 10,000 devices need, from our measured figures.

How it works: the per-node figures are read from the benchmark results that
BENCHMARKS.md is generated from, never typed in:

* ``benchmarks/results/latest.json`` (``make bench-compare``): the edge node's
  end-to-end QoS 1 throughput with the durable buffer on, its CPU per message at a
  fixed rate, and its backlog drain rate; Mosquitto's bridge beside it;
* ``benchmarks/results/buffer.json`` (``make bench-buffer``): bytes on disk per
  buffered message, and the buffer's own ingest rate.

From those and the deployment (sites, devices per site, message interval, payload,
outage length, headroom) it derives: edge brokers per site (N+1, so a site keeps
its throughput with one broker down), the cloud broker's steady and worst-case
ingress and its connection count, disk per broker for the outage, and drain times.
It is arithmetic, not a simulation of queues: every row says which input it uses.

What it does not do: measure anything, or model the cloud broker's internals (an
EMQX or HiveMQ cluster is sized from its vendor's per-node figures against the
message rates and connection counts given here).

Run with ``make simulate-capacity`` (or ``python -m simulations.capacity --help``).
Writes ``simulations/out/capacity.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.common import OUT

ROOT = Path(__file__).resolve().parents[1]
LATEST = ROOT / "benchmarks" / "results" / "latest.json"
BUFFER = ROOT / "benchmarks" / "results" / "buffer.json"


class MissingFigure(RuntimeError):
    """A figure the model needs is not in the benchmark results: run the benchmark first."""


@dataclass(frozen=True)
class Measured:
    """The per-node figures the model uses, with where each came from."""

    node_e2e_msg_s: float  # edge node, QoS 1 edge -> cloud, durable buffer, saturated
    node_cpu_us: float  # edge node CPU per message at a fixed offered rate
    node_drain_msg_s: float  # backlog drain rate of one edge node
    mosq_e2e_msg_s: float
    disk_bytes_per_msg: float  # SQLite file bytes per buffered message (at the benchmark's payload)
    bench_payload: int
    buffer_ingest_msg_s: float  # Store.append, durability "os", many producers
    sources: dict[str, str]
    edge_kind: str = "edgemq"  # which benchmark topology the edge figures come from
    drain_kind: str = "edgemq"


def _median(runs: list[dict[str, Any]], scenario: str, kind: str, key: str, case: str | None = None) -> float | None:
    vals = [
        float(r["result"][key])
        for r in runs
        if r.get("scenario") == scenario
        and r.get("kind") == kind
        and (case is None or r.get("case") == case)
        and isinstance(r.get("result"), dict)
        and r["result"].get(key) is not None
    ]
    return statistics.median(vals) if vals else None


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _need(value: float | None, what: str, path: Path) -> float:
    if value is None or value <= 0:
        raise MissingFigure(f"{what} is not in {_show(path)}: run the benchmark that writes it first")
    return value


def read_measured(latest: Path = LATEST, buffer: Path = BUFFER) -> Measured:
    try:
        bench = json.loads(latest.read_text())
        buf = json.loads(buffer.read_text())
    except FileNotFoundError as exc:
        raise MissingFigure(f"{exc.filename} is missing: run `make bench-compare` and `make bench-buffer`") from exc
    runs = bench.get("runs", [])
    # The edge node as deployed: with a third-party cloud broker ("edgemq-mosq": our edge node,
    # Mosquitto as the cloud), else with our embedded amqtt cloud ("edgemq").
    kinds = {r.get("kind") for r in runs if r.get("scenario") == "e2e"}
    edge_kind = "edgemq-mosq" if "edgemq-mosq" in kinds else "edgemq"
    drain_kinds = {r.get("kind") for r in runs if r.get("scenario") == "drain"}
    drain_kind = "edgemq-mosq" if "edgemq-mosq" in drain_kinds else "edgemq"
    # The slower of the e2e cases (1 and 100 publishers): a site has many devices.
    e2e_cases = {r["case"] for r in runs if r.get("scenario") == "e2e" and r.get("kind") == edge_kind}
    e2e = [m for c in sorted(e2e_cases) if (m := _median(runs, "e2e", edge_kind, "msg_per_s", c)) is not None]
    mosq = [m for c in sorted(e2e_cases) if (m := _median(runs, "e2e", "mosquitto", "msg_per_s", c)) is not None]
    os_mode = buf.get("modes", {}).get("os", {})
    reopen = os_mode.get("reopen", {})
    depth, file_mb = reopen.get("depth"), reopen.get("file_mb")
    return Measured(
        node_e2e_msg_s=_need(min(e2e) if e2e else None, "edgemq e2e msg/s", latest),
        node_cpu_us=_need(_median(runs, "cpu", "edgemq", "edge_cpu_us_per_msg"), "edgemq edge CPU us/msg", latest),
        node_drain_msg_s=_need(_median(runs, "drain", drain_kind, "drain_msg_per_s"), "edgemq drain msg/s", latest),
        mosq_e2e_msg_s=_need(min(mosq) if mosq else None, "Mosquitto bridge e2e msg/s", latest),
        disk_bytes_per_msg=_need(file_mb * 1e6 / depth if depth and file_mb else None, "buffer bytes/msg", buffer),
        bench_payload=int(buf.get("method", {}).get("payload", 100)),
        buffer_ingest_msg_s=_need(os_mode.get("store_ingest", {}).get("msg_per_s"), "buffer ingest msg/s", buffer),
        edge_kind=edge_kind,
        drain_kind=drain_kind,
        sources={
            "latest": f"{_show(latest)} ({bench.get('started', '?')}, {bench.get('machine', {}).get('git', '?')})",
            "buffer": f"{_show(buffer)} (payload {buf.get('method', {}).get('payload', '?')} B)",
        },
    )


@dataclass(frozen=True)
class Deployment:
    sites: int = 100
    devices_per_site: int = 10_000
    interval_s: float = 10.0  # one message per device every interval_s
    payload: int = 100
    outage_h: float = 24.0
    headroom: float = 0.5  # run nodes at most at this fraction of measured capacity
    disk_margin: float = 1.5  # provision disk at this multiple of the computed backlog
    cloud_burst_factor: float = 2.0  # the cloud takes at most this multiple of its steady ingress during drains


@dataclass(frozen=True)
class Plan:
    site_rate: float
    brokers_per_site: int
    brokers_by_throughput: int
    cores_per_site: float
    cloud_steady: float
    cloud_connections: int
    backlog_per_site: float
    disk_per_broker_gb: float
    site_drain_capacity: float
    drain_s: float  # inf if the site cannot drain while live traffic continues
    drain_fraction_of_outage: float
    cloud_burst: float
    rate_limit: float  # per-broker bridge.rate_limit that keeps an all-sites drain within the cloud budget
    limited_drain_s: float


def plan(m: Measured, d: Deployment) -> Plan:
    site_rate = d.devices_per_site / d.interval_s
    usable = m.node_e2e_msg_s * d.headroom
    by_throughput = max(1, math.ceil(site_rate / usable))
    brokers = by_throughput + 1  # N+1: one broker down, the rest still carry the site at the headroom
    # Disk: the backlog spreads over the brokers by ownership; size every broker for its share
    # with one broker down (the backlog of a dead broker's devices lands on the others).
    per_msg = m.disk_bytes_per_msg + max(0, d.payload - m.bench_payload)
    backlog = site_rate * d.outage_h * 3600
    disk_per_broker = backlog / (brokers - 1) * per_msg * d.disk_margin / 1e9
    # Drain: every broker drains its share while live traffic keeps arriving.
    drain_capacity = brokers * m.node_drain_msg_s
    spare = drain_capacity - site_rate
    drain_s = backlog / spare if spare > 0 else math.inf
    # Every site draining at once (after a cloud outage) must fit the cloud's burst budget.
    rate_limit = min(m.node_drain_msg_s, d.cloud_burst_factor * site_rate * d.sites / (d.sites * brokers))
    limited_spare = brokers * rate_limit - site_rate
    return Plan(
        site_rate=site_rate,
        brokers_per_site=brokers,
        brokers_by_throughput=by_throughput,
        cores_per_site=site_rate * m.node_cpu_us / 1e6,
        cloud_steady=site_rate * d.sites,
        cloud_connections=brokers * d.sites,
        backlog_per_site=backlog,
        disk_per_broker_gb=disk_per_broker,
        site_drain_capacity=drain_capacity,
        drain_s=drain_s,
        drain_fraction_of_outage=drain_s / (d.outage_h * 3600),
        cloud_burst=drain_capacity * d.sites,
        rate_limit=rate_limit,
        limited_drain_s=backlog / limited_spare if limited_spare > 0 else math.inf,
    )


def _dur(s: float) -> str:
    if math.isinf(s):
        return "never (drain capacity below the live rate)"
    return f"{s / 3600:,.1f} h" if s >= 3600 else f"{s / 60:,.1f} min"


def report(m: Measured, d: Deployment, p: Plan) -> str:
    return "\n".join(
        [
            "# Internet scale, by model",
            "",
            "Generated by `make simulate-capacity` (simulations/capacity.py) from the measured figures below; "
            "change the deployment with its options (`--help`).",
            "",
            f"Deployment: **{d.sites} sites x {d.devices_per_site:,} devices**, one {d.payload}-byte message per "
            f"device every {d.interval_s:g} s, an uplink outage of {d.outage_h:g} h, nodes run at most at "
            f"{d.headroom:.0%} of measured capacity, disk provisioned at {d.disk_margin:g}x the backlog.",
            "",
            "## Inputs (read, not typed)",
            "",
            "| figure | value | from |",
            "| --- | ---: | --- |",
            f"| edge node e2e QoS 1, durable buffer (slower of 1 and 100 publishers; topology `{m.edge_kind}`) "
            f"| {m.node_e2e_msg_s:,.0f} msg/s | {m.sources['latest']} |",
            f"| Mosquitto bridge e2e QoS 1, same run (reference) | {m.mosq_e2e_msg_s:,.0f} msg/s | same |",
            f"| edge node CPU per message at a fixed rate | {m.node_cpu_us:,.0f} µs | same |",
            f"| edge node backlog drain rate (topology `{m.drain_kind}`) | {m.node_drain_msg_s:,.0f} msg/s | same |",
            f"| buffer bytes on disk per message ({m.bench_payload}-byte payload) | {m.disk_bytes_per_msg:,.0f} B "
            f"| {m.sources['buffer']} |",
            f"| buffer ingest (Store.append, durability os) | {m.buffer_ingest_msg_s:,.0f} msg/s | same |",
            "",
            "## What it takes",
            "",
            "| quantity | value | how |",
            "| --- | ---: | --- |",
            f"| site message rate | {p.site_rate:,.0f} msg/s | devices / interval |",
            f"| edge brokers per site | **{p.brokers_per_site}** | ceil(rate / (node e2e x headroom)) = "
            f"{p.brokers_by_throughput}, +1 so a site keeps its rate with one broker down |",
            f"| CPU cores per site for the edge nodes | {p.cores_per_site:,.2f} | rate x CPU per message |",
            f"| cloud ingress, steady | **{p.cloud_steady:,.0f} msg/s** | sites x site rate |",
            f"| cloud connections from the edge | {p.cloud_connections:,} | one uplink per edge broker "
            f"(devices never connect to the cloud) |",
            f"| cloud ingress, worst case (every site draining at once after a cloud outage) | "
            f"**{p.cloud_burst:,.0f} msg/s** | sites x brokers x node drain rate; a drain rate limit "
            f"(`bridge.rate_limit`, if set) caps it |",
            f"| backlog per site after {d.outage_h:g} h | {p.backlog_per_site:,.0f} messages | rate x outage |",
            f"| disk per edge broker | **{p.disk_per_broker_gb:,.1f} GB** | backlog / (brokers - 1) x bytes per "
            f"message x margin |",
            f"| site drain capacity | {p.site_drain_capacity:,.0f} msg/s | brokers x node drain rate |",
            f"| drain time after the outage, live traffic continuing | **{_dur(p.drain_s)}** "
            f"({p.drain_fraction_of_outage:.1%} of the outage) | backlog / (drain capacity - live rate) |",
            f"| `bridge.rate_limit` per broker so that all sites draining at once stay within "
            f"{d.cloud_burst_factor:g}x the cloud's steady ingress | **{p.rate_limit:,.0f} msg/s** | "
            f"{d.cloud_burst_factor:g} x steady / (sites x brokers), at most the node drain rate |",
            f"| drain time with that limit | {_dur(p.limited_drain_s)} | backlog / (brokers x limit - live rate) |",
            "",
            "Topologies: `edgemq-mosq` is our edge node with Debian's Mosquitto as the cloud broker, as in a "
            "deployment with a third-party cloud; `edgemq` uses our embedded amqtt cloud, which is slower than "
            "the edge node and limits those figures. "
            "Caveats: the node figures come from a 2-core shared machine with the brokers and the load "
            "generator on it; a dedicated gateway is faster, so these counts are upper bounds. The cloud "
            "figure for the drain burst assumes the cloud accepts what the edges can send; the per-broker "
            "drain rate limit in the cluster file is the lever that trades drain time for cloud load.",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=Deployment.sites)
    ap.add_argument("--devices-per-site", type=int, default=Deployment.devices_per_site)
    ap.add_argument("--interval-s", type=float, default=Deployment.interval_s)
    ap.add_argument("--payload", type=int, default=Deployment.payload)
    ap.add_argument("--outage-h", type=float, default=Deployment.outage_h)
    ap.add_argument("--headroom", type=float, default=Deployment.headroom)
    args = ap.parse_args()
    d = Deployment(
        sites=args.sites,
        devices_per_site=args.devices_per_site,
        interval_s=args.interval_s,
        payload=args.payload,
        outage_h=args.outage_h,
        headroom=args.headroom,
    )
    try:
        m = read_measured()
    except MissingFigure as exc:
        raise SystemExit(f"error: {exc}") from None
    text = report(m, d, plan(m, d))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "capacity.md").write_text(text)
    print(text)
    print(f"report: {OUT / 'capacity.md'}")


if __name__ == "__main__":
    main()
