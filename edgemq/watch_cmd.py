"""``edgemq watch``: what flows through a broker, as a live terminal dashboard.

Command-line layer: subscribes at the cloud or at one edge broker (address from the
cluster file), feeds every message to ``devices.flow.FlowTable`` (the pure
aggregation: rates over a sliding window, last value, last seen) and renders it
with rich ``Live``. When stdout is not a terminal it prints one line per message
instead. Reconnects with back-off if the broker goes away; Ctrl-C stops cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated

import aiomqtt
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from broker.client_auth import ClientLogin, cloud_login, site_login
from broker.config import ClusterConfig, load
from broker.ratelog import RateLimitedLog
from broker.topics import TopicError, validate_filter
from devices.fleet import backoff_delay
from devices.flow import FlowSnapshot, FlowTable, describe_payload
from edgemq.devices_cmd import exit_on_config_error, run_until_signalled, setup_cli_logging

__all__ = ["Endpoint", "resolve_endpoint", "watch"]

log = logging.getLogger(__name__)

PLAIN_VALUE_CHARS = 200
DASHBOARD_VALUE_CHARS = 48
DEFAULT_CONFIG = Path("cluster.toml")


class _OutputClosed(Exception):
    """stdout is a closed pipe; nobody reads the lines any more."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to subscribe: a broker's address and how to log in (``broker.client_auth``)."""

    name: str
    host: str
    port: int
    login: ClientLogin = field(default_factory=ClientLogin)


def resolve_endpoint(cfg: ClusterConfig, ref: str) -> Endpoint:
    """``cloud`` or ``<site>/<broker>`` → its address and the operator's login (ConfigError if unknown).

    With ``[security] generate`` that is the generated ``operator`` user over TLS; otherwise
    the cloud's ``username``/``password_env``/``[cloud.tls]`` or ``[security.client]``.
    """
    if ref == "cloud":
        c = cfg.cloud
        login = cloud_login(cfg, "operator")
        host, port = login.endpoint(c.host, c.port, c.tls_port)
        return Endpoint("cloud", host, port, login)
    site, b = cfg.locate(ref)
    login = site_login(cfg, "operator", site.id)
    host, port = login.endpoint(b.host, b.port, b.tls_port)
    return Endpoint(f"{site.id}/{b.id}", host, port, login)


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


class _Watcher:
    def __init__(self, endpoint: Endpoint, topic_filter: str, console: Console) -> None:
        self.endpoint = endpoint
        self.topic_filter = topic_filter
        self.console = console
        self.live = console.is_terminal
        self.table = FlowTable(value_chars=DASHBOARD_VALUE_CHARS)
        self.state = "connecting"
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.warnings = RateLimitedLog(log, interval_s=30.0, clock=self.loop.time)

    def _client(self) -> aiomqtt.Client:
        ep = self.endpoint
        return aiomqtt.Client(
            ep.host,
            ep.port,
            identifier=f"edgemq-watch-{os.getpid()}-{random.getrandbits(32):08x}",
            clean_session=True,
            **ep.login.aiomqtt_kwargs(),
            keepalive=30,
            timeout=10,
            logger=logging.getLogger(f"{__name__}.mqtt"),
        )

    async def receive(self) -> None:
        """Subscribe and take messages, reconnecting with back-off, until cancelled."""
        rng = random.Random()
        attempt = 0
        ep = self.endpoint
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(self.topic_filter, qos=0)
                    self.state = "subscribed"
                    log.info("watching %s at %s (%s:%d)", self.topic_filter, ep.name, ep.host, ep.port)
                    attempt = 0
                    async for msg in client.messages:
                        self._on_message(msg)
            except _OutputClosed:
                return
            except aiomqtt.MqttError as exc:
                self.state = f"disconnected: {exc}"
                self.warnings.warning("conn", "cannot watch %s at %s:%d: %s; retrying", ep.name, ep.host, ep.port, exc)
            await asyncio.sleep(backoff_delay(attempt, rng, 0.5, 10.0))
            attempt += 1
            self.state = "reconnecting"

    def _on_message(self, msg: aiomqtt.Message) -> None:
        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
        topic = msg.topic.value
        self.table.observe(topic, payload, self.loop.time())
        if not self.live:
            stamp = datetime.now().isoformat(timespec="milliseconds")
            retained = " (retained)" if msg.retain else ""
            try:
                print(f"{stamp} {topic} {describe_payload(payload, PLAIN_VALUE_CHARS)}{retained}", flush=True)
            except BrokenPipeError:
                # The reader went away (`edgemq watch | head`): stop quietly, and keep the
                # interpreter's final flush from complaining about the closed pipe.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise _OutputClosed from None

    def render(self) -> RenderableType:
        """The dashboard as of now."""
        now = self.loop.time()
        snap = self.table.snapshot(now)
        ep = self.endpoint
        header = Text.assemble(
            ("edgemq watch ", "bold"),
            f"{self.topic_filter} at {ep.name} ({ep.host}:{ep.port}) · ",
            (self.state, "green" if self.state == "subscribed" else "yellow"),
            f" · {snap.total_rate:,.1f} msg/s · {snap.total_count:,} messages · {now - self.started:.0f}s",
        )
        return Group(header, self._sites(snap), self._sources(snap))

    def _sites(self, snap: FlowSnapshot) -> Table:
        t = Table(title="sites", title_justify="left", expand=False)
        t.add_column("site")
        t.add_column("msg/s", justify="right")
        t.add_column("messages", justify="right")
        t.add_column("devices", justify="right")
        t.add_column("last seen")
        for s in snap.sites:
            t.add_row(s.site, f"{s.rate:,.1f}", f"{s.count:,}", str(s.sources), _ago(snap.now - s.last_seen))
        return t

    def _sources(self, snap: FlowSnapshot) -> Table:
        room = max(self.console.size.height - len(snap.sites) - 14, 3)
        shown = snap.sources[:room]
        hidden = len(snap.sources) - len(shown)
        title = "devices" + (f" (most recent {len(shown)} of {len(snap.sources)})" if hidden else "")
        t = Table(title=title, title_justify="left", expand=False)
        t.add_column("site")
        t.add_column("device")
        t.add_column("msg/s", justify="right")
        t.add_column("messages", justify="right")
        t.add_column("last value", overflow="ellipsis", no_wrap=True)
        t.add_column("last seen")
        for s in shown:
            t.add_row(s.site, s.device, f"{s.rate:,.1f}", f"{s.count:,}", s.last_value, _ago(snap.now - s.last_seen))
        return t


async def _run(endpoint: Endpoint, topic_filter: str, duration: float | None, stop: asyncio.Event) -> FlowSnapshot:
    console = Console()
    w = _Watcher(endpoint, topic_filter, console)
    receiver = asyncio.create_task(w.receive(), name="watch-receive")
    live = Live(console=console, get_renderable=w.render, refresh_per_second=4, transient=False) if w.live else None
    try:
        if live is not None:
            live.start()
        stopper = asyncio.create_task(stop.wait(), name="watch-stop")
        await asyncio.wait((receiver, stopper), timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if receiver.done():
            receiver.result()  # a bug in the receiver surfaces here rather than being swallowed
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        if live is not None:
            live.stop()
    return w.table.snapshot(w.loop.time())


def watch(
    topic_filter: Annotated[str, typer.Argument(help="MQTT topic filter to watch.")] = "telemetry/#",
    broker: Annotated[str, typer.Option(help="cloud or <site>/<broker>")] = "cloud",
    config: Annotated[Path, typer.Option("--config", "-c", help="The cluster file (TOML).")] = DEFAULT_CONFIG,
    duration: Annotated[
        float | None, typer.Option(min=0.001, help="Stop after this many seconds (default: at Ctrl-C).")
    ] = None,
) -> None:
    """Live dashboard of what flows through a broker: messages/s per site and per device, last value,
    last seen. Prints one line per message instead when stdout is not a terminal."""
    err = Console(stderr=True)
    setup_cli_logging(err, "WARNING")
    try:
        validate_filter(topic_filter)
    except TopicError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    cfg = exit_on_config_error(lambda: load(config), err)
    endpoint = exit_on_config_error(lambda: resolve_endpoint(cfg, broker), err)
    t0 = time.monotonic()
    snap, interrupted = run_until_signalled(lambda stop: _run(endpoint, topic_filter, duration, stop), err)
    err.print(
        f"watched {topic_filter} at {endpoint.name} for {time.monotonic() - t0:.1f}s: "
        f"{snap.total_count:,} messages from {len(snap.sources):,} sources",
        soft_wrap=True,
    )
    if interrupted:
        raise typer.Exit(130)
