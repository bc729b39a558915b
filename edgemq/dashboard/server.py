"""The dashboard process: the ASGI app under uvicorn, the MQTT feed, metrics and a stats file.

Like every other component it writes ``<run>/stats/dashboard.json`` every second (so
``cluster status`` shows it) and serves /metrics on its HTTP port + 1000
(``EDGEMQ_METRICS_PORT`` overrides; see docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

import uvicorn

from broker.client_auth import cloud_login, site_login
from broker.config import ClusterConfig
from edgemq import metrics
from edgemq.dashboard.aggregate import Aggregator
from edgemq.dashboard.app import Hub, create_app
from edgemq.dashboard.feed import EdgeEndpoint, Feed
from edgemq.node import LatestSnapshot, stats_path, write_json_atomic

__all__ = ["DEFAULT_PORT", "dashboard_port", "owner_function", "run_dashboard"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 18880
ENV_PORT = "EDGEMQ_DASHBOARD_PORT"


def dashboard_port(explicit: int | None = None, cfg: ClusterConfig | None = None) -> int:
    """The dashboard's HTTP port: explicit, else $EDGEMQ_DASHBOARD_PORT, else the cluster file's
    (``[dashboard] port``, or the cloud's MQTT port + 50), else 18880."""
    if explicit is not None:
        return explicit
    env = os.environ.get(ENV_PORT)
    if env:
        return int(env)
    return cfg.dashboard_port() if cfg is not None else DEFAULT_PORT


def owner_function(cfg: ClusterConfig) -> Any:
    """(site, device) -> owning broker id by the cluster file's rings (None for unknown sites)."""
    from functools import lru_cache

    from broker.ring import Ring

    rings = {s.id: Ring((b.id, b.weight) for b in s.brokers) for s in cfg.sites if any(b.weight > 0 for b in s.brokers)}

    @lru_cache(maxsize=65536)
    def owner(site: str, device: str) -> str | None:
        ring = rings.get(site)
        return ring.owner(f"{site}/{device}") if ring is not None else None

    return owner


async def run_dashboard(
    cfg: ClusterConfig,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    telemetry_filter: str = "telemetry/#",
    tail_filter: str | None = None,
    edges: bool = True,
    cloud_port: int | None = None,
    metrics_port: int | None = None,
) -> None:
    """Serve the dashboard until SIGTERM/SIGINT."""
    http_port = dashboard_port(port, cfg)
    agg = Aggregator(
        [(s.id, b.id) for s in cfg.sites for b in s.brokers],
        owner=owner_function(cfg),
        tail_filter=tail_filter or telemetry_filter,
    )
    cloud = cfg.cloud if cloud_port is None else cfg.cloud.model_copy(update={"port": cloud_port})
    endpoints = (
        [EdgeEndpoint(s.id, b.id, b.host, b.port, b.tls_port) for s in cfg.sites for b in s.brokers] if edges else []
    )
    feed = Feed(
        agg,
        cloud,
        telemetry_filter=telemetry_filter,
        edges=endpoints,
        cloud_login=cloud_login(cfg, "dashboard"),
        edge_login=site_login(cfg, "dashboard"),
    )
    app = create_app(agg, feed=feed)
    hub: Hub = app.state.hub
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=http_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
    )
    latest = LatestSnapshot()
    chosen = (
        metrics.metrics_port(http_port, configured=cfg.dashboard.metrics_port) if metrics_port is None else metrics_port
    )
    mserver = metrics.serve(latest, chosen) if chosen is not None and chosen >= 0 else None
    started = time.time()
    url = f"http://{host}:{http_port}/"

    def snapshot() -> dict[str, Any]:
        return {
            "component": "dashboard",
            "broker": "dashboard",
            "pid": os.getpid(),
            "address": f"{host}:{http_port}",
            "url": url,
            "started": started,
            "ts": time.time(),
            "metrics": mserver.url if mserver else None,
            "dashboard": {"messages": agg.messages_total, "devices": agg.device_count, "clients": len(hub.clients)},
        }

    async def stats_loop() -> None:
        path = stats_path(cfg, "dashboard")
        while True:
            latest.value = data = snapshot()
            try:
                write_json_atomic(path, data)
            except OSError as exc:
                log.warning("cannot write stats %s: %s", path, exc)
            await asyncio.sleep(1.0)

    loop = asyncio.get_running_loop()
    # uvicorn installs its own handlers inside serve(); ours make SIGTERM from supervisord
    # a clean exit even before it does.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    stats = asyncio.create_task(stats_loop(), name="dashboard-stats")
    log.info("dashboard on %s (cloud %s:%s, telemetry %s)", url, cloud.host, cloud.port, telemetry_filter)
    try:
        await server.serve()
    finally:
        stats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stats
        if mserver is not None:
            mserver.close()
        log.info("dashboard stopped")
