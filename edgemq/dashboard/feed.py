"""The dashboard's MQTT side: subscriptions at the cloud and at each edge broker (aiomqtt).

At the cloud: ``edgemq/+/+/state`` and ``edgemq/+/+/stats`` (retained: membership and
the last snapshot of every broker, including brokers on other machines that are not
in our cluster file) and the telemetry filter. At each edge broker of the cluster
file (optional): its own ``edgemq/{site}/{broker}/stats``, which keeps coming while
its uplink is down, so the backlog is visible where it piles up.

Each connection reconnects with a capped back-off and reports itself up or down to
the aggregator. Foreign exceptions stay here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt

from broker.client_auth import ClientLogin
from broker.config import CloudConfig
from broker.ratelog import RateLimitedLog
from edgemq.dashboard.aggregate import Aggregator

__all__ = ["EdgeEndpoint", "Feed"]

log = logging.getLogger(__name__)

MAX_QUEUED = 200_000


@dataclass(frozen=True)
class EdgeEndpoint:
    """An edge broker the dashboard also subscribes at."""

    site: str
    broker: str
    host: str
    port: int
    tls_port: int | None = None

    @property
    def key(self) -> str:
        return f"{self.site}/{self.broker}"


class Feed:
    """Keeps the aggregator fed until cancelled."""

    def __init__(
        self,
        aggregator: Aggregator,
        cloud: CloudConfig,
        *,
        telemetry_filter: str = "telemetry/#",
        edges: list[EdgeEndpoint] | None = None,
        clock: Callable[[], float] = time.time,
        cloud_login: ClientLogin | None = None,
        edge_login: ClientLogin | None = None,
    ) -> None:
        self.agg = aggregator
        self.cloud = cloud
        # How we log in (credentials, TLS); from the CloudConfig if not given.
        self.cloud_login = cloud_login or ClientLogin(
            cloud.username, os.environ.get(cloud.password_env) if cloud.password_env else None, cloud.tls
        )
        self.edge_login = edge_login or ClientLogin()
        self.telemetry_filter = telemetry_filter
        self.edges = edges or []
        self.clock = clock
        self._ratelog = RateLimitedLog(log)
        self._ident = f"edgemq-dashboard-{os.getpid()}"

    async def run(self) -> None:
        """Run every connection; returns only when cancelled."""
        tasks = [asyncio.create_task(self._loop("cloud", self._serve_cloud), name="dashboard-cloud")]
        for edge in self.edges:
            tasks.append(
                asyncio.create_task(
                    self._loop(f"edge:{edge.key}", functools.partial(self._serve_edge, edge), [edge.key]),
                    name=f"dashboard-edge-{edge.key}",
                )
            )
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, name: str, serve: Callable[[], Awaitable[None]], keys: list[str] | None = None) -> None:
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                await serve()
            except aiomqtt.MqttError as exc:
                self._ratelog.warning(name, "dashboard feed %s down: %s", name, exc)
            except OSError as exc:
                self._ratelog.warning(name, "dashboard feed %s down: %s", name, exc)
            self.agg.on_source(name, False, keys or [])
            if time.monotonic() - started > 10:
                delay = 0.5
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    def _cloud_client(self) -> aiomqtt.Client:
        c, login = self.cloud, self.cloud_login
        host, port = login.endpoint(c.host, c.port, c.tls_port)
        return aiomqtt.Client(
            host,
            port,
            identifier=f"{self._ident}-cloud",
            **login.aiomqtt_kwargs(),
            timeout=10,
            max_queued_incoming_messages=MAX_QUEUED,
            logger=logging.getLogger("edgemq.dashboard.paho"),
        )

    async def _serve_cloud(self) -> None:
        async with self._cloud_client() as client:
            host, port = self.cloud_login.endpoint(self.cloud.host, self.cloud.port, self.cloud.tls_port)
            log.info("dashboard subscribed at the cloud %s:%s%s", host, port, " (TLS)" if self.cloud_login.tls else "")
            self.agg.on_source("cloud", True)
            await client.subscribe("edgemq/+/+/state", qos=1)
            await client.subscribe("edgemq/+/+/stats", qos=0)
            await client.subscribe(self.telemetry_filter, qos=0)
            agg, clock = self.agg, self.clock
            async for message in client.messages:
                topic = str(message.topic)
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                parts = topic.split("/")
                if len(parts) == 4 and parts[0] == "edgemq":
                    if parts[3] == "state":
                        agg.on_state(parts[1], parts[2], payload, clock())
                        continue
                    if parts[3] == "stats":
                        agg.on_stats(parts[1], parts[2], payload, clock())
                        continue
                agg.on_telemetry(topic, payload, clock())

    async def _serve_edge(self, edge: EdgeEndpoint) -> None:
        host, port = self.edge_login.endpoint(edge.host, edge.port, edge.tls_port)
        async with aiomqtt.Client(
            host,
            port,
            identifier=f"{self._ident}-{edge.site}-{edge.broker}",
            **self.edge_login.aiomqtt_kwargs(),
            timeout=10,
            logger=logging.getLogger("edgemq.dashboard.paho"),
        ) as client:
            self.agg.on_source(f"edge:{edge.key}", True, [edge.key])
            await client.subscribe(f"edgemq/{edge.site}/{edge.broker}/stats", qos=0)
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                self.agg.on_stats(edge.site, edge.broker, payload, self.clock())
