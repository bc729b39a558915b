"""``edgemq dashboard``: the live web dashboard in the foreground (what `cluster up` supervises)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from broker.config import load
from broker.topics import TopicError, validate_filter
from edgemq.logs import setup_logging

__all__ = ["dashboard"]


def dashboard(
    config: Annotated[Path, typer.Option("--config", "-c", help="The cluster file (TOML).")] = Path("cluster.toml"),
    host: Annotated[str, typer.Option(help="Address the web server listens on.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(
            help="HTTP port (default: $EDGEMQ_DASHBOARD_PORT, else the cluster file's "
            "[dashboard] port, else the cloud port + 50)."
        ),
    ] = None,
    telemetry: Annotated[str, typer.Option(help="Telemetry filter subscribed at the cloud.")] = "telemetry/#",
    tail: Annotated[str | None, typer.Option(help="Filter of the live tail (default: the telemetry filter).")] = None,
    edges: Annotated[
        bool, typer.Option(help="Also subscribe at each edge broker (backlog visible while an uplink is down).")
    ] = True,
    cloud_port: Annotated[int | None, typer.Option(help="Cloud MQTT port, if not the cluster file's.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Prometheus port (default: [dashboard] metrics_port, else HTTP port + 1000; 0 any free; -1 off)."
        ),
    ] = None,
    log_level: str = "INFO",
) -> None:
    """A live web dashboard: broker health, rates, backlogs, devices per broker, a live tail."""
    from edgemq.dashboard.server import run_dashboard

    try:
        validate_filter(telemetry)
        if tail is not None:
            validate_filter(tail)
    except TopicError as exc:
        raise typer.BadParameter(str(exc)) from exc
    cfg = load(config)
    setup_logging("dashboard", log_level)
    asyncio.run(
        run_dashboard(
            cfg,
            host=host,
            port=port,
            telemetry_filter=telemetry,
            tail_filter=tail,
            edges=edges,
            cloud_port=cloud_port,
            metrics_port=metrics_port,
        )
    )
