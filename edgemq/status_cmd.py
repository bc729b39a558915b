"""``edgemq cluster status`` (one table, ``--json``, ``--watch``) and the progress bar of ``cluster up``.

A status row merges two views:
- this machine's supervisor (``ClusterRunner.status``): process state, pid, whether
  it answers, its stats file;
- live membership at the cloud: the retained ``edgemq/+/+/state`` and
  ``edgemq/+/+/stats`` of every broker, read with a short-lived MQTT subscription
  (``Membership``). Brokers on other machines, which this machine's supervisor
  does not know, appear as rows of kind ``remote``.
  With ``--from-site S`` the membership is read from the first broker of site S
  that answers instead: every edge broker holds every site peer's state document
  (docs/site.md), so this works with the uplink down; clients, uplink state and
  backlog of the other brokers then come from their state documents.

``--watch`` refreshes every second (rich ``Live`` on a terminal; plain snapshots,
separated by a blank line, otherwise) and computes msg/s from successive samples.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from broker.config import ClusterConfig
from edgemq.cluster import ClusterRunner, Step

__all__ = ["COLUMNS", "Membership", "merge_rows", "print_status", "run_status", "up_progress"]

COLUMNS = (
    ("component", "component"),
    ("state", "state"),
    ("pid", "pid"),
    ("address", "address"),
    ("answers", "answers"),
    ("member", "member"),
    ("clients", "clients"),
    ("in", "messages_in"),
    ("out", "messages_out"),
    ("msg/s", "rate_in"),
    ("uplink", "uplink"),
    ("backlog", "backlog"),
    ("oldest", "oldest_age_s"),
    ("dropped", "dropped"),
)


class Membership:
    """Retained state and stats of every broker at the cloud, kept current by a paho subscriber."""

    def __init__(self, cfg: ClusterConfig, source: tuple[str, int] | None = None) -> None:
        self.cfg = cfg
        self.source = source or (cfg.cloud.host, cfg.cloud.port)
        self.states: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._last_message = time.monotonic()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgemq-status-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if not rc.is_failure:
            client.subscribe([("edgemq/+/+/state", 1), ("edgemq/+/+/stats", 0)])
            self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        try:
            data = json.loads(msg.payload) if msg.payload else {"state": "offline"}
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        with self._lock:
            self._last_message = time.monotonic()
            (self.states if parts[3] == "state" else self.stats)[f"{parts[1]}/{parts[2]}"] = data

    def start(self, timeout: float = 3.0) -> bool:
        """Connect and subscribe; False if the source (the cloud by default) does not answer within ``timeout``."""
        host, port = self.source
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError:
            return False
        self._client.loop_start()
        return self.connected.wait(timeout)

    def settle(self, quiet_s: float = 0.3, timeout: float = 2.0) -> None:
        """Wait until the retained messages have arrived (no new one for ``quiet_s``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if time.monotonic() - self._last_message > quiet_s:
                    return
            time.sleep(0.05)

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        with self._lock:
            return dict(self.states), dict(self.stats)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def merge_rows(
    local: list[dict[str, Any]],
    states: dict[str, dict[str, Any]],
    stats: dict[str, dict[str, Any]],
    cloud_reached: bool,
) -> list[dict[str, Any]]:
    """Local rows plus ``member`` (online/offline/unknown from the cloud) and rows for remote brokers."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in local:
        row = dict(row)
        if row["kind"] == "edge":
            key = row["component"].replace(".", "/", 1)
            seen.add(key)
            row["member"] = (states.get(key) or {}).get("state", "unknown") if cloud_reached else "unknown"
        rows.append(row)
    for key in sorted(set(states) | set(stats)):
        if key in seen:
            continue
        s = stats.get(key) or {}
        st = states.get(key) or {}  # a site-local state document also has address, clients, uplink, backlog
        buf, link = s.get("buffer") or {}, s.get("uplink") or {}
        rows.append(
            {
                "component": key.replace("/", ".", 1),
                "kind": "remote",
                "state": "-",
                "pid": None,
                "address": s.get("address", st.get("address")),
                "answers": None,
                "member": st.get("state", "unknown"),
                "clients": s.get("clients", st.get("clients")),
                "messages_in": s.get("messages_in"),
                "messages_out": s.get("messages_out"),
                "uplink": link.get("state", st.get("uplink")),
                "backlog": buf.get("depth_messages", st.get("backlog")),
                "oldest_age_s": buf.get("oldest_age_s"),
                "dropped": sum((buf.get("dropped") or {}).values()) if buf else None,
                "ts": s.get("ts"),
            }
        )
    return rows


def add_rates(rows: list[dict[str, Any]], previous: dict[str, tuple[float, int, float | None]]) -> None:
    """Set ``rate_in`` (msg/s) from the previous sample of each component, by its snapshot ``ts``."""
    for row in rows:
        ts, n = row.get("ts"), row.get("messages_in")
        if ts is None or n is None:
            continue
        prev = previous.get(row["component"])
        rate = prev[2] if prev is not None else None
        if prev is not None and float(ts) > prev[0]:
            rate = round(max(0.0, (int(n) - prev[1]) / (float(ts) - prev[0])), 1)
        if prev is None or float(ts) > prev[0]:
            previous[row["component"]] = (float(ts), int(n), rate)
        row["rate_in"] = rate


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "answers":
        return "-" if value is None or not row.get("address") else ("yes" if value else "no")
    if key == "oldest_age_s":
        return f"{value:.1f}s" if value else "-"
    return "-" if value is None else str(value)


def render(rows: list[dict[str, Any]], title: str = "edgemq cluster") -> Table:
    table = Table(title=title)
    for name, _ in COLUMNS:
        table.add_column(name)
    for r in rows:
        cells = [_cell(r, key) for _, key in COLUMNS]
        ok = r["state"] == "RUNNING" or (r["kind"] == "remote" and r.get("member") == "online")
        cells[1] = f"[{'green' if ok else 'red'}]{cells[1]}[/]"
        member = r.get("member")
        if member:
            cells[5] = f"[{'green' if member == 'online' else 'red' if member == 'offline' else 'dim'}]{member}[/]"
        table.add_row(*cells)
    return table


def plain(rows: list[dict[str, Any]]) -> str:
    widths = [max(len(title), *(len(_cell(r, key)) for r in rows)) for title, key in COLUMNS]
    lines = ["  ".join(title.ljust(w) for (title, _), w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(_cell(r, key).ljust(w) for (_, key), w in zip(COLUMNS, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def print_status(rows: list[dict[str, Any]], console: Console) -> None:
    """A rich table on a terminal; plain aligned lines otherwise (scripts, logs, pipes)."""
    if console.is_terminal:
        console.print(render(rows))
    else:
        print(plain(rows), flush=True)


def collect(runner: ClusterRunner, membership: Membership | None) -> list[dict[str, Any]]:
    local = runner.status()
    if membership is None:
        return local
    states, stats = membership.snapshot()
    return merge_rows(local, states, stats, membership.connected.is_set())


def run_status(
    runner: ClusterRunner,
    *,
    as_json: bool = False,
    watch: bool = False,
    live: bool = True,
    interval: float = 1.0,
    console: Console | None = None,
    iterations: int | None = None,
    from_site: str | None = None,
) -> None:
    """Print the status once, or every ``interval`` seconds with ``watch`` (until Ctrl-C).

    ``from_site``: read membership from the first answering broker of that site, not the cloud.
    """
    console = console or Console()
    membership: Membership | None = None
    if live:
        membership = _open_membership(runner.cfg, from_site)
    previous: dict[str, tuple[float, int, float | None]] = {}
    try:
        if not watch:
            rows = collect(runner, membership)
            if as_json:
                print(json.dumps(rows, indent=2, default=str))
            else:
                print_status(rows, console)
            return
        n = 0
        if console.is_terminal and not as_json:
            with Live(console=console, auto_refresh=False) as screen:
                while iterations is None or n < iterations:
                    rows = collect(runner, membership)
                    add_rates(rows, previous)
                    screen.update(render(rows, f"edgemq cluster · {time.strftime('%H:%M:%S')}"), refresh=True)
                    n += 1
                    time.sleep(interval)
            return
        while iterations is None or n < iterations:
            rows = collect(runner, membership)
            add_rates(rows, previous)
            if as_json:
                print(json.dumps({"ts": time.time(), "rows": rows}, default=str), flush=True)
            else:
                print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}\n{plain(rows)}\n", flush=True)
            n += 1
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if membership is not None:
            membership.stop()


def _open_membership(cfg: ClusterConfig, from_site: str | None) -> Membership | None:
    """A started membership view from the cloud, or from the first broker of ``from_site`` that answers."""
    if from_site is None:
        sources: list[tuple[str, int] | None] = [None]
    else:
        site = next((s for s in cfg.sites if s.id == from_site), None)
        if site is None:
            raise ValueError(f"no site {from_site!r} in the cluster file")
        sources = [(b.host, b.port) for b in site.brokers]
    for source in sources:
        membership = Membership(cfg, source)
        if membership.start():
            membership.settle()
            return membership
        membership.stop()
    return None


@contextmanager
def up_progress(console: Console) -> Iterator[tuple[Callable[[str], None], Step]]:
    """(say, step) for ``ClusterRunner.up``: a progress bar with rate and time remaining on a terminal."""
    if not console.is_terminal:
        yield (lambda msg: console.print(msg)), (lambda done, total, what: None)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting components", total=None)

        def step(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"up: {what}")

        yield (lambda msg: bar.console.print(f"[dim]{msg}[/]")), step
