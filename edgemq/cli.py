"""The ``edgemq`` command: the one composition root that imports every package.

edgemq cluster up|down|status     run the whole cluster from the cluster file
edgemq broker cloud|edge          one process (what `cluster up` supervises)
edgemq devices simulate           a device fleet
edgemq ring owner|show|diff       who owns which device, and what a change would move
edgemq buffer stats|peek          the store-and-forward buffers
edgemq bridge                     the bridge alone, beside any local MQTT broker
edgemq users add|remove|list      broker credentials
edgemq dashboard                  the live web dashboard
edgemq watch FILTER               a terminal dashboard of what flows
edgemq config check               validate a cluster file
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from broker.config import ClusterConfig, load
from broker.errors import EdgeMQError
from edgemq.bridge_cmd import bridge
from edgemq.buffer_cmd import buffer_app
from edgemq.dashboard.cmd import dashboard
from edgemq.devices_cmd import devices_app
from edgemq.ring_cmd import ring_app
from edgemq.users_cmd import users_app
from edgemq.watch_cmd import watch

__all__ = ["app", "main"]

CONFIG_HELP = "The cluster file (TOML)."
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help=CONFIG_HELP)]

app = typer.Typer(
    help="edgemq: an MQTT telemetry broker cluster for IoT edge sites.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cluster_app = typer.Typer(help="Run the whole cluster on this machine (supervised processes).", no_args_is_help=True)
broker_app = typer.Typer(help="Run one broker process in the foreground.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect and validate cluster files.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(broker_app, name="broker")
app.add_typer(devices_app, name="devices")
app.add_typer(ring_app, name="ring")
app.add_typer(buffer_app, name="buffer")
app.add_typer(users_app, name="users")
app.command("watch")(watch)
app.command("bridge")(bridge)
app.command("dashboard")(dashboard)
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)


def _load(path: Path) -> ClusterConfig:
    return load(path)


def setup_logging(component: str, level: str = "INFO", *, site: str | None = None, broker: str | None = None) -> None:
    """Log handlers are set up here, at entry points only: key=value lines (edgemq.logs)."""
    from edgemq.logs import setup_logging as setup_kv

    setup_kv(component, level, site=site, broker=broker)


# ---- cluster ------------------------------------------------------------------------------
STATUS_COLUMNS = (
    ("component", "component"),
    ("state", "state"),
    ("pid", "pid"),
    ("address", "address"),
    ("answers", "answers"),
    ("clients", "clients"),
    ("in", "messages_in"),
    ("out", "messages_out"),
    ("uplink", "uplink"),
    ("backlog", "backlog"),
)


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "answers":
        return ("yes" if value else "no") if row.get("address") else "-"
    return _num(value)


def _print_status(rows: list[dict[str, Any]]) -> None:
    """A rich table on a terminal; plain aligned lines otherwise (scripts, logs, pipes)."""
    if not out.is_terminal:
        widths = [max(len(title), *(len(_cell(r, key)) for r in rows)) for title, key in STATUS_COLUMNS]
        print("  ".join(title.ljust(w) for (title, _), w in zip(STATUS_COLUMNS, widths, strict=True)))
        for r in rows:
            print("  ".join(_cell(r, key).ljust(w) for (_, key), w in zip(STATUS_COLUMNS, widths, strict=True)))
        return
    table = Table(title="edgemq cluster")
    for title, _ in STATUS_COLUMNS:
        table.add_column(title)
    for r in rows:
        cells = [_cell(r, key) for _, key in STATUS_COLUMNS]
        style = "green" if r["state"] == "RUNNING" else "red"
        cells[1] = f"[{style}]{cells[1]}[/]"
        table.add_row(*cells)
    out.print(table)


def _num(v: Any) -> str:
    return "-" if v is None else str(v)


@cluster_app.command("up")
def cluster_up(
    config: ConfigOpt = Path("cluster.toml"),
    devices: Annotated[int, typer.Option(help="Also run a fleet of this many simulated devices.")] = 0,
    device_rate: Annotated[float, typer.Option(help="Messages per second per simulated device.")] = 1.0,
    dashboard: Annotated[bool, typer.Option("--dashboard/--no-dashboard", help="Also run the web dashboard.")] = True,
    dashboard_port: Annotated[int | None, typer.Option(help="Dashboard HTTP port (default: cloud port + 50).")] = None,
) -> None:
    """Start the cloud broker, every edge node, the dashboard and (optionally) a fleet; return once all answer."""
    from edgemq.cluster import ClusterRunner
    from edgemq.status_cmd import up_progress

    cfg = _load(config)
    runner = ClusterRunner(
        cfg, config, devices=devices, device_rate=device_rate, dashboard=dashboard, dashboard_port=dashboard_port
    )
    with up_progress(err) as (say, step):
        rows = runner.up(progress=say, step=step)
    _print_status(rows)
    if dashboard:
        print(f"dashboard: {runner.dashboard_url()}")
    print(f"run directory: {cfg.run_dir}")
    for r in rows:
        print(f"  {r['component']:<14} {r['address'] or '':<22} log: {r['log']}")
    print("try:\n" + "\n".join(runner.how_to_connect()) + "\nstop with: make cluster-down")


@cluster_app.command("down")
def cluster_down(config: ConfigOpt = Path("cluster.toml")) -> None:
    """Stop every component cleanly (buffers are flushed and kept)."""
    from edgemq.cluster import ClusterRunner

    cfg = _load(config)
    if ClusterRunner(cfg, config).down(progress=lambda m: err.print(m)):
        out.print("cluster stopped")


@cluster_app.command("status")
def cluster_status(
    config: ConfigOpt = Path("cluster.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second.")] = False,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Membership from the cloud's retained state.")] = True,
    from_site: Annotated[
        str | None,
        typer.Option("--from-site", help="Read membership from any answering broker of this site, not the cloud."),
    ] = None,
) -> None:
    """Each component: supervisor state, pid, address, whether it answers, clients, messages in/out."""
    from edgemq.cluster import ClusterRunner
    from edgemq.status_cmd import run_status

    cfg = _load(config)
    if from_site is not None and all(s.id != from_site for s in cfg.sites):
        raise typer.BadParameter(f"no site {from_site!r} in {config}", param_hint="--from-site")
    run_status(ClusterRunner(cfg, config), as_json=as_json, watch=watch, live=live, console=out, from_site=from_site)


# ---- single processes ---------------------------------------------------------------------
@broker_app.command("cloud")
def broker_cloud(config: ConfigOpt = Path("cluster.toml"), log_level: str = "INFO") -> None:
    """Run the embedded cloud broker (amqtt) in the foreground."""
    from edgemq.node import run_cloud, run_node

    cfg = _load(config)
    setup_logging("cloud", log_level)
    run_node(run_cloud(cfg))


@broker_app.command("edge")
def broker_edge(
    broker: Annotated[str, typer.Option(help="Which edge broker: '<site>/<broker>', e.g. plant-1/a1.")],
    config: ConfigOpt = Path("cluster.toml"),
    log_level: str = "INFO",
) -> None:
    """Run one edge node (broker + durable buffer + cloud bridge) in the foreground."""
    from edgemq.node import run_edge, run_node

    cfg = _load(config)
    site, b = cfg.locate(broker)
    setup_logging(f"{site.id}.{b.id}", log_level, site=site.id, broker=b.id)
    run_node(run_edge(cfg, site.id, b.id))


@config_app.command("check")
def config_check(config: ConfigOpt = Path("cluster.toml")) -> None:
    """Validate a cluster file and summarise it."""
    cfg = _load(config)
    cloud = "embedded" if cfg.cloud.embedded else "external"
    out.print(f"{config}: ok — cloud ({cloud}) {cfg.cloud.host}:{cfg.cloud.port}, run_dir {cfg.run_dir}")
    for s in cfg.sites:
        brokers = ", ".join(f"{b.id}@{b.host}:{b.port} w={b.weight:g}" for b in s.brokers)
        out.print(f"  site {s.id}: {brokers}")


def main() -> None:
    """Entry point: run the app; an EdgeMQError becomes one clear message and exit code 2."""
    try:
        app()
    except EdgeMQError as exc:
        err.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            err.print(f"[dim]hint: {exc.hint}[/]")
        sys.exit(2)
