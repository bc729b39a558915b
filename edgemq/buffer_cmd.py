"""``edgemq buffer stats|peek``: what each broker's store-and-forward buffer holds.

Both read the buffer files read-only (``bridge.inspection``), so they work while
the nodes run and after they stopped. ``stats`` reads each file twice,
``--interval`` apart, for the drain rate and the time to drain, and takes the link
state and in-flight count from the node's stats file (written every second by
``edgemq broker edge`` and ``edgemq bridge``); a stats file older than
``STALE_AFTER_S`` or marked stopped means the node is not running. ``stats --watch``
follows a drain live instead (``edgemq.buffer_watch``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bridge.inspection import FileSnapshot, drain_estimate, peek, read_snapshot
from broker.config import ClusterConfig, load
from broker.errors import ConfigError, StoreError
from edgemq.buffer_watch import watch
from edgemq.node import buffer_path, component_name, stats_path

__all__ = ["broker_rows", "buffer_app", "site_total"]

STALE_AFTER_S = 5.0
PREVIEW_CHARS = 48

buffer_app = typer.Typer(
    help="Inspect the store-and-forward buffers (read-only; nodes may be running or stopped).",
    no_args_is_help=True,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The cluster file (TOML).")]
BrokerOpt = Annotated[str | None, typer.Option("--broker", help="One broker: '<site>/<broker>', e.g. plant-1/a1.")]


def _refs(cfg: ClusterConfig, site: str | None, broker: str | None) -> list[tuple[str, str]]:
    """(site, broker) pairs selected by --site/--broker (all brokers of all sites by default)."""
    if broker is not None:
        s, b = cfg.locate(broker)
        if site is not None and site != s.id:
            raise ConfigError(f"--broker {broker} is not in --site {site}", hint="give one or the other")
        return [(s.id, b.id)]
    sites = [cfg.site(site)] if site is not None else cfg.sites
    return [(s.id, b.id) for s in sites for b in s.brokers]


def _node_state(cfg: ClusterConfig, site: str, broker: str, now: float) -> tuple[str, int | None]:
    """Link state and in-flight count from the node's stats file; ('stopped', None) if not running."""
    try:
        data = json.loads(stats_path(cfg, component_name(site, broker)).read_text())
    except (OSError, ValueError):
        return "stopped", None
    uplink = data.get("uplink") or {}
    if data.get("stopped") or now - float(data.get("ts", 0.0)) > STALE_AFTER_S:
        return "stopped", None
    return str(uplink.get("state", "running")), int(uplink.get("inflight", 0))


def broker_rows(
    cfg: ClusterConfig,
    refs: list[tuple[str, str]],
    interval_s: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """One row per broker: depth, age, in-flight, rates, time to drain, drops, peak."""
    first: dict[tuple[str, str], FileSnapshot | StoreError] = {}
    for ref in refs:
        first[ref] = _try_snapshot(cfg, ref, clock())
    if interval_s > 0:
        sleep(interval_s)
    rows = []
    for ref in refs:
        site, broker = ref
        now = clock()
        state, inflight = _node_state(cfg, site, broker, now)
        before = first[ref]
        after = _try_snapshot(cfg, ref, now) if interval_s > 0 else before
        row: dict[str, Any] = {"site": site, "broker": broker, "ref": f"{site}/{broker}", "state": state}
        row["path"] = str(buffer_path(cfg, site, broker))
        if isinstance(after, StoreError):
            rows.append(row | {"state": "no buffer" if state == "stopped" else state, "error": after.message})
            continue
        est = drain_estimate(before, after) if isinstance(before, FileSnapshot) and interval_s > 0 else None
        row |= {
            "depth_messages": after.depth_messages,
            "depth_bytes": after.depth_bytes,
            "oldest_age_s": after.oldest_age_s,
            "inflight": inflight,
            "drain_rate": None if est is None else est.forward_rate,
            "ingest_rate": None if est is None else est.ingest_rate,
            "net_drain_rate": None if est is None else est.net_drain_rate,
            "eta_s": (0.0 if after.depth_messages == 0 else None) if est is None else est.eta_s,
            "dropped": after.dropped,
            "peak_depth_messages": after.peak_depth_messages,
            "peak_depth_bytes": after.peak_depth_bytes,
            "accepted": after.accepted,
            "forwarded": after.forwarded,
            "head_seq": after.head_seq,
            "tail_seq": after.tail_seq,
            "balanced": after.balanced,
        }
        rows.append(row)
    return rows


# Looked up at call time so tests can drive a watch without real seconds passing.
_clock: Callable[[], float] = time.time
_sleep: Callable[[float], None] = time.sleep


def _watch_read(cfg: ClusterConfig, ref: tuple[str, str], now: float) -> FileSnapshot | StoreError | None:
    """A watch's read of one buffer: None when the broker has no buffer file (nothing to drain)."""
    if not buffer_path(cfg, *ref).exists():
        return None
    return _try_snapshot(cfg, ref, now)


def _try_snapshot(cfg: ClusterConfig, ref: tuple[str, str], now: float) -> FileSnapshot | StoreError:
    try:
        return read_snapshot(buffer_path(cfg, *ref), now)
    except StoreError as exc:
        return exc


def _sum(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) if values else None


def site_total(site: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A site's buffers added up. Brokers drain in parallel: the site's time to drain is the
    longest one (unknown if any is not draining); its peak is the sum of the brokers' peaks."""
    ok = [r for r in rows if "error" not in r]
    etas = [r.get("eta_s") for r in ok]
    dropped: dict[str, int] = {}
    for r in ok:
        for reason, n in r["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    ages = [r["oldest_age_s"] for r in ok if r.get("oldest_age_s") is not None]
    return {
        "site": site,
        "ref": f"{site} (total)",
        "brokers": len(rows),
        "state": f"{sum(r['state'] not in ('stopped', 'no buffer') for r in rows)}/{len(rows)} running",
        "depth_messages": _sum(ok, "depth_messages") or 0,
        "depth_bytes": _sum(ok, "depth_bytes") or 0,
        "oldest_age_s": max(ages) if ages else None,
        "inflight": _sum(ok, "inflight"),
        "drain_rate": _sum(ok, "drain_rate"),
        "ingest_rate": _sum(ok, "ingest_rate"),
        "net_drain_rate": _sum(ok, "net_drain_rate"),
        "eta_s": None if not ok or any(e is None for e in etas) else max(e for e in etas if e is not None),
        "dropped": dropped,
        "peak_depth_messages": _sum(ok, "peak_depth_messages") or 0,
        "peak_depth_bytes": _sum(ok, "peak_depth_bytes") or 0,
        "accepted": _sum(ok, "accepted") or 0,
        "forwarded": _sum(ok, "forwarded") or 0,
    }


# ---- formatting ---------------------------------------------------------------------------
def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - unreachable


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h < 48 else f"{h // 24}d{h % 24:02d}h"


def _rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}/s"


def _eta(row: dict[str, Any]) -> str:
    if row.get("eta_s") is not None:
        return _age(row["eta_s"])
    # A measured rate that does not bring the backlog down: it is not draining.
    return "stalled" if row.get("depth_messages") and row.get("drain_rate") is not None else "-"


def _drops(d: dict[str, int] | None) -> str:
    if not d:
        return "-"
    parts = [f"{reason} {n}" for reason, n in d.items() if n]
    return ", ".join(parts) if parts else "0"


STATS_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("broker", lambda r: str(r["ref"])),
    ("state", lambda r: str(r["state"])),
    ("depth", lambda r: "-" if "error" in r else str(r["depth_messages"])),
    ("bytes", lambda r: "-" if "error" in r else _bytes(r["depth_bytes"])),
    ("oldest", lambda r: _age(r.get("oldest_age_s"))),
    ("inflight", lambda r: "-" if r.get("inflight") is None else str(r["inflight"])),
    ("drain", lambda r: _rate(r.get("drain_rate"))),
    ("in", lambda r: _rate(r.get("ingest_rate"))),
    ("eta", _eta),
    ("drops", lambda r: "-" if r["state"] == "no buffer" else r.get("error") or _drops(r.get("dropped"))),
    ("peak", lambda r: "-" if "error" in r else f"{r['peak_depth_messages']} ({_bytes(r['peak_depth_bytes'])})"),
)


def _print_table(console: Console, title: str, columns: list[str], rows: list[list[str]], bold_last: bool) -> None:
    """A rich table on a terminal; plain aligned lines otherwise (scripts, logs, pipes)."""
    if not console.is_terminal:
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for i, r in enumerate(rows):
        table.add_row(*r, style="bold" if bold_last and i == len(rows) - 1 else None)
    console.print(table)


@buffer_app.command("stats")
def stats(
    config: ConfigOpt = Path("cluster.toml"),
    site: Annotated[str | None, typer.Option("--site", help="All brokers of one site, plus its total.")] = None,
    broker: BrokerOpt = None,
    interval: Annotated[
        float,
        typer.Option(
            help="Seconds between the two reads that give the drain rate; 0 skips rates. "
            "With --watch: seconds between refreshes."
        ),
    ] = 1.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output (with --watch: one JSON object per refresh).")
    ] = False,
    watch_: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Follow the drain: progress bars with rate and time remaining (plain lines off a terminal).",
        ),
    ] = False,
    until_empty: Annotated[
        bool, typer.Option("--until-empty", help="Watch until every selected buffer is empty, then exit 0.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(min=0.0, help="Stop watching after S seconds (with --until-empty: exit 1 if not yet empty)."),
    ] = None,
) -> None:
    """Depth (messages, bytes), oldest age, in-flight, drain rate, time to drain, drops by reason, peak."""
    cfg = load(config)
    refs = _refs(cfg, site, broker)
    if watch_ or until_empty:
        code = watch(
            refs,
            lambda ref, now: _watch_read(cfg, ref, now),
            period_s=interval if interval > 0 else 1.0,
            until_empty=until_empty,
            timeout_s=timeout,
            console=Console(),
            as_json=as_json,
            clock=_clock,
            sleep=_sleep,
        )
        raise typer.Exit(code)
    rows = broker_rows(cfg, refs, max(0.0, interval))
    sites = list(dict.fromkeys(r["site"] for r in rows))
    totals = {s: site_total(s, [r for r in rows if r["site"] == s]) for s in sites}
    if as_json:
        print(json.dumps({"brokers": rows, "sites": list(totals.values())}, indent=2))
        return
    console = Console()
    for s in sites:
        body = [r for r in rows if r["site"] == s] + [totals[s]]
        cells = [[fmt(r) for _, fmt in STATS_COLUMNS] for r in body]
        _print_table(console, f"buffers of site {s}", [c for c, _ in STATS_COLUMNS], cells, bold_last=True)


def _preview(payload: bytes) -> str:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable():
        return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
    shown = payload[: PREVIEW_CHARS // 2].hex()
    return f"0x{shown}" + ("…" if len(payload) > PREVIEW_CHARS // 2 else "")


@buffer_app.command("peek")
def peek_cmd(
    config: ConfigOpt = Path("cluster.toml"),
    broker: BrokerOpt = None,
    n: Annotated[int, typer.Option("-n", "--count", min=1, help="How many of the oldest messages.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (payload as text or hex).")] = False,
) -> None:
    """The oldest buffered messages (next to be forwarded): seq, age, topic, size, payload preview."""
    cfg = load(config)
    refs = _refs(cfg, None, broker)
    now = time.time()
    out: list[dict[str, Any]] = []
    for s, b in refs:
        try:
            msgs = peek(buffer_path(cfg, s, b), n)
        except StoreError as exc:
            if len(refs) == 1:
                raise
            out.append({"broker": f"{s}/{b}", "error": exc.message})
            continue
        for m in msgs:
            out.append(
                {
                    "broker": f"{s}/{b}",
                    "seq": m.seq,
                    "id": f"{s}/{b}/{m.seq}",
                    "age_s": max(0.0, now - m.enqueued_at),
                    "topic": m.topic,
                    "size": len(m.topic.encode()) + len(m.payload),
                    "qos": m.qos,
                    "retain": m.retain,
                    "payload": _preview(m.payload),
                }
            )
    if as_json:
        print(json.dumps(out, indent=2))
        return
    columns = ["broker", "seq", "age", "topic", "size", "payload"]
    cells = [
        [r["broker"], "-", "-", r["error"], "-", "-"]
        if "error" in r
        else [r["broker"], str(r["seq"]), _age(r["age_s"]), r["topic"], str(r["size"]), r["payload"]]
        for r in out
    ]
    if not cells:
        print("no buffered messages")
        return
    _print_table(Console(), "oldest buffered messages", columns, cells, bold_last=False)
