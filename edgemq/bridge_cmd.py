"""``edgemq bridge``: the store-and-forward bridge as its own process, beside any local broker.

For a site whose edge broker is not edgemq's (e.g. Mosquitto): ``bridge.local_source``
takes the uplink topics from the local broker into the same SQLite buffer an edge
node would use (``run/data/<site>/<broker>.sqlite3``), and ``bridge.link.Uplink``
drains it to the cloud and injects downlink commands into the local broker. It
writes the same stats file as an edge node (``run/stats/<site>.<broker>.json``), so
``edgemq buffer stats`` and ``cluster status`` read it alike. What this mode
guarantees, and what it does not, is in docs/guarantees.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bridge.link import Uplink
from bridge.local_source import LocalSource
from broker.config import ClusterConfig, load
from broker.topics import TopicMap
from edgemq.node import buffer_path, component_name, open_store, stats_path

__all__ = ["bridge", "run_bridge"]

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


async def run_bridge(cfg: ClusterConfig, ref: str, local_host: str, local_port: int) -> None:
    """Run the standalone bridge for ``ref`` ('<site>/<broker>') until SIGTERM/SIGINT."""
    site, bcfg = cfg.locate(ref)
    name = component_name(site.id, bcfg.id)
    path = buffer_path(cfg, site.id, bcfg.id)
    started = time.time()
    async with open_store(cfg, path) as store:
        uplink_map = TopicMap.build(cfg.bridge.uplink, site.id)
        async with LocalSource(
            host=local_host, port=local_port, site=site.id, broker_id=bcfg.id, uplink_map=uplink_map, store=store
        ) as source:
            link = Uplink(
                cloud=cfg.cloud, bridge=cfg.bridge, site=site.id, broker_id=bcfg.id, store=store, inject=source.inject
            )
            log.info(
                "bridge %s/%s: local %s:%s -> cloud %s:%s, buffer %s",
                site.id,
                bcfg.id,
                local_host,
                local_port,
                cfg.cloud.host,
                cfg.cloud.port,
                path,
            )

            def snapshot() -> dict[str, Any]:
                local = source.statistics()
                return {
                    "component": name,
                    "kind": "bridge",
                    "pid": os.getpid(),
                    "address": local["host"],
                    "started": started,
                    "ts": time.time(),
                    "clients": None,
                    "messages_in": local["received"],
                    "messages_out": local["injected"],
                    "local": local,
                    "uplink": link.statistics().__dict__,
                    "buffer": dataclasses.asdict(store.statistics()),
                    "buffer_path": str(path),
                    "append_failures": local["refused"],
                }

            async def stats_loop() -> None:
                while True:
                    try:
                        _write_json_atomic(stats_path(cfg, name), snapshot())
                    except OSError as exc:
                        log.warning("cannot write stats: %s", exc)
                    await asyncio.sleep(STATS_INTERVAL_S)

            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            link_task = asyncio.create_task(link.run(), name=f"uplink-{site.id}-{bcfg.id}")
            stats_task = asyncio.create_task(stats_loop(), name="stats")
            stop_task = asyncio.create_task(stop.wait(), name="signals")
            try:
                done, _ = await asyncio.wait({link_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                if link_task in done:
                    log.critical("uplink task ended unexpectedly: %r", link_task.exception())
                    raise SystemExit(3)
            finally:
                log.info("bridge %s/%s shutting down", site.id, bcfg.id)
                for task in (stats_task, link_task, stop_task):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                with contextlib.suppress(OSError):
                    _write_json_atomic(stats_path(cfg, name), snapshot() | {"stopped": True})


def bridge(
    broker: Annotated[str, typer.Option(help="Which broker this bridge stands for: '<site>/<broker>'.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="The cluster file (TOML).")] = Path("cluster.toml"),
    local_host: Annotated[str, typer.Option(help="The local MQTT broker the devices publish to.")] = "127.0.0.1",
    local_port: Annotated[int, typer.Option(help="Its port.")] = 1883,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING...")] = "INFO",
) -> None:
    """Run the store-and-forward bridge beside any local MQTT broker (e.g. Mosquitto), in the foreground."""
    from edgemq.cli import setup_logging  # the command-line layer; imported late (it registers us)

    cfg = load(config)
    site, b = cfg.locate(broker)
    setup_logging(f"bridge.{site.id}.{b.id}", log_level, site=site.id, broker=b.id)
    asyncio.run(run_bridge(cfg, broker, local_host, local_port))


if __name__ == "__main__":  # `python -m edgemq.bridge_cmd` until the command is registered
    typer.run(bridge)
