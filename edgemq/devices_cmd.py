"""``edgemq devices``: run a simulated device fleet against a site's edge brokers.

Command-line layer only: parses options, sets up logging, shows progress (rich on a
terminal, plain lines otherwise) and turns Ctrl-C / SIGTERM into a clean stop.
The fleet itself is ``devices.fleet.run_fleet``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from broker.config import ClusterConfig, load
from broker.errors import EdgeMQError
from devices.fleet import FleetConfig, FleetResult, FleetStats, run_fleet

__all__ = ["devices_app", "exit_on_config_error", "run_until_signalled", "setup_cli_logging", "simulate"]

T = TypeVar("T")

devices_app = typer.Typer(
    help="Simulated devices: a fleet of MQTT clients publishing JSON telemetry and taking commands.",
    no_args_is_help=True,
)

STATS_INTERVAL_S = 1.0
DEFAULT_CONFIG = Path("cluster.toml")
PLAIN_INTERVAL_S = 5.0


def setup_cli_logging(console: Console, level: str) -> None:
    """Handlers for a foreground command, unless an entry point already set them up."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[T]], console: Console) -> tuple[T, bool]:
    """Run ``main(stop)``: SIGINT/SIGTERM set ``stop``, 2nd SIGINT aborts; gives (result, interrupted)."""
    interrupted = False

    async def runner() -> T:
        nonlocal interrupted
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()

        def on_sigint() -> None:
            nonlocal interrupted
            if stop.is_set() and task is not None:
                task.cancel()
                return
            interrupted = True
            console.print("stopping cleanly (Ctrl-C again to abort)", style="yellow")
            stop.set()

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            return await main(stop)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(runner()), interrupted
    except (asyncio.CancelledError, KeyboardInterrupt):
        console.print("aborted", style="red")
        raise typer.Exit(130) from None


def exit_on_config_error(load_it: Callable[[], T], console: Console) -> T:
    """Run ``load_it``; an EdgeMQError becomes one message and exit code 2."""
    try:
        return load_it()
    except EdgeMQError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            console.print(f"[dim]hint: {exc.hint}[/]")
        raise typer.Exit(2) from None


class _Display:
    """Progress while the fleet runs: rich on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, console: Console, cfg: FleetConfig, stats_file: Path | None) -> None:
        self.console = console
        self.cfg = cfg
        self.stats_file = stats_file
        self.last_stats_write = 0.0
        self.last_line = 0.0
        self.last_started = 0
        self.prev: tuple[float, int] = (0.0, 0)
        self.rate = 0.0
        self.prev_conn: tuple[float, int] = (0.0, 0)
        self.conn_rate = 0.0
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description:<13}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            total = cfg.devices * cfg.messages if cfg.messages is not None else None
            self.tasks["conn"] = self.progress.add_task("connected", total=cfg.devices, info="")
            self.tasks["acked"] = self.progress.add_task("acknowledged", total=total, info="")

    def __enter__(self) -> _Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, s: FleetStats) -> None:
        t0, n0 = self.prev
        if s.elapsed_s - t0 >= 1.0:
            self.rate = (s.acked - n0) / (s.elapsed_s - t0)
            self.prev = (s.elapsed_s, s.acked)
        t1, c1 = self.prev_conn
        if s.elapsed_s - t1 >= 1.0:
            self.conn_rate = max(0, s.connected - c1) / (s.elapsed_s - t1)
            self.prev_conn = (s.elapsed_s, s.connected)
        connecting = s.connected < s.devices
        conn_info = f"{self.conn_rate:,.0f} conn/s · started {s.started}" if connecting else f"started {s.started}"
        info = (
            f"{self.rate:,.0f} msg/s · published {s.published:,} · commands {s.commands} · "
            f"errors {s.errors} · reconnects {s.reconnects}"
        )
        if self.progress is not None:
            self.progress.update(self.tasks["conn"], completed=s.connected, info=conn_info)
            self.progress.update(self.tasks["acked"], completed=s.acked, info=info)
        else:
            now = time.monotonic()
            starting = s.started != self.last_started
            if starting or now - self.last_line >= PLAIN_INTERVAL_S:
                self.last_line = now
                self.last_started = s.started
                eta = (s.devices - s.connected) / self.conn_rate if self.conn_rate > 0 else None
                connect = f" connect_rate={self.conn_rate:.0f}/s connect_eta={'-' if eta is None else f'{eta:.0f}s'}"
                print(
                    f"t={s.elapsed_s:.1f}s connected={s.connected}/{s.devices}{connect if connecting else ''} "
                    f"started={s.started} "
                    f"published={s.published} acked={s.acked} rate={self.rate:.0f}/s commands={s.commands} "
                    f"errors={s.errors} reconnects={s.reconnects}",
                    flush=True,
                )
        self._write_stats(s)

    def _write_stats(self, s: FleetStats, final: bool = False) -> None:
        if self.stats_file is None:
            return
        now = time.monotonic()
        if not final and now - self.last_stats_write < STATS_INTERVAL_S:
            return
        self.last_stats_write = now
        data: dict[str, Any] = {
            "component": "devices",
            "pid": os.getpid(),
            "site": self.cfg.site.id,
            "updated": time.time(),
            "stopped": final,
            **dataclasses.asdict(s),
        }
        try:
            self.stats_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.stats_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.stats_file)
        except OSError as exc:
            logging.getLogger(__name__).warning("cannot write stats %s: %s", self.stats_file, exc)
            self.stats_file = None

    def summary(self, result: FleetResult, interrupted: bool) -> None:
        s = result.stats
        self._write_stats(s, final=True)
        per_broker = Counter(d.broker for d in result.devices)
        rate = s.acked / s.elapsed_s if s.elapsed_s > 0 else 0.0
        how = "interrupted" if interrupted else ("stopped" if result.stopped else "done")
        rows = [
            ("devices", f"{s.devices} (peak connected {s.connected_peak})"),
            ("published", f"{s.published:,}"),
            ("acknowledged", f"{s.acked:,} ({rate:,.0f} msg/s over {s.elapsed_s:.1f}s)"),
            ("commands", f"{s.commands:,}"),
            ("errors", f"{s.errors:,} (reconnects {s.reconnects:,})"),
            ("brokers", ", ".join(f"{b}: {n}" for b, n in sorted(per_broker.items()))),
        ]
        if self.console.is_terminal:
            table = Table(title=f"fleet {how}: site {self.cfg.site.id}", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            for k, v in rows:
                table.add_row(k, v)
            self.console.print(table)
        else:
            print(f"fleet {how}: site {self.cfg.site.id}", flush=True)
            for k, v in rows:
                print(f"  {k}: {v}", flush=True)


def _stats_file(cluster: ClusterConfig) -> Path:
    # Same place edgemq.node.stats_path gives the 'devices' component (read by `cluster status`);
    # not imported from there because that module pulls in the broker (amqtt).
    return cluster.run_dir / "stats" / "devices.json"


@devices_app.command("simulate")
def simulate(
    config: Annotated[Path, typer.Option("--config", "-c", help="The cluster file (TOML).")] = DEFAULT_CONFIG,
    site: Annotated[
        str | None, typer.Option(help="Site whose brokers the devices use; the first site if unset.")
    ] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Number of devices.")] = 10,
    rate: Annotated[float, typer.Option(min=0.001, help="Messages per second, per device.")] = 1.0,
    messages: Annotated[
        int | None, typer.Option(min=1, help="Stop each device after this many acknowledged messages.")
    ] = None,
    duration: Annotated[float | None, typer.Option(min=0.001, help="Stop the fleet after S seconds.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for start offsets, readings and back-off jitter.")] = 1,
    first: Annotated[int, typer.Option(min=0, help="Number of the first device (dev-0001 by default).")] = 1,
    batch: Annotated[int, typer.Option(min=1, help="Devices started (and connecting) at once.")] = 50,
    move_window: Annotated[
        float,
        typer.Option(
            min=0,
            help="When the site's ring changes, devices with a new owner move to it at a random "
            "moment within this many seconds (then the usual hold-down).",
        ),
    ] = 30.0,
    stats: Annotated[bool, typer.Option(help="Write stats to <run_dir>/stats/devices.json.")] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run COUNT devices, each its own MQTT connection with a persistent session, publishing JSON
    telemetry at QoS 1 on telemetry/<site>/<device>/reading and logging the commands they receive
    on commands/<site>/<device>/#. Without --messages or --duration it runs until Ctrl-C or SIGTERM."""
    out = Console()
    err = Console(stderr=True)
    setup_cli_logging(err, log_level)
    cluster = exit_on_config_error(lambda: load(config), err)
    site_cfg = exit_on_config_error(lambda: cluster.site(site) if site else cluster.sites[0], err)
    login: dict[str, Any] = {}
    if cluster.security.generate:
        # The secure profile's trial mode: each simulated device gets its own generated user.
        from broker.provision import Layout, ensure_devices
        from devices.fleet import device_ids

        passwords = exit_on_config_error(lambda: ensure_devices(cluster, site_cfg.id, device_ids(first, count)), err)
        login = {"passwords": passwords, "ca_file": Layout(cluster.run_dir).ca_cert}
    fleet_cfg = FleetConfig(
        **login,
        site=site_cfg,
        devices=count,
        rate=rate,
        messages=messages,
        duration_s=duration,
        seed=seed,
        first_device=first,
        connect_batch=batch,
        move_window_s=move_window,
    )
    bound = " ".join(
        part
        for part in (
            f"{messages} messages each" if messages else "",
            f"for at most {duration:g}s" if duration else "",
        )
        if part
    )
    err.print(
        f"fleet: {count} devices on site {site_cfg.id} ({len(site_cfg.brokers)} brokers), "
        f"{rate:g} msg/s each, {bound or 'until Ctrl-C'}",
        soft_wrap=True,
    )
    display = _Display(out, fleet_cfg, _stats_file(cluster) if stats else None)

    async def main(stop: asyncio.Event) -> FleetResult:
        with display:
            return await run_fleet(fleet_cfg, display.update, stop=stop)

    result, interrupted = run_until_signalled(main, err)
    display.summary(result, interrupted)
    if result.stats.connected_peak == 0:
        err.print("[bold red]error:[/] no device could connect; is the site's broker running?")
        raise typer.Exit(1)
    if interrupted:
        raise typer.Exit(130)
