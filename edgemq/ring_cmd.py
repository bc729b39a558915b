"""``edgemq ring``: who owns a device, how a site's devices spread, and what a config change moves.

Command-line layer only: reads the cluster file(s), asks the site's ring
(``devices.placement.site_ring``, i.e. ``broker.ring``) and prints. Rich tables
on a terminal, plain aligned lines otherwise (scripts, pipes, tests).

    edgemq ring owner DEVICE [--site S] [-n 3]     owner and preference list
    edgemq ring show [--site S] [--devices N]      weight, expected share, sample and connected clients
    edgemq ring diff OLD.toml NEW.toml [--devices N | --device-list FILE]
                                                   which devices would move, and where
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from broker.config import ClusterConfig, SiteConfig, load
from broker.ring import Ring, moves
from devices.fleet import device_ids
from devices.placement import device_key, preference, site_ring
from edgemq.devices_cmd import exit_on_config_error

__all__ = ["ring_app"]

ring_app = typer.Typer(
    help="Ownership: which broker of a site owns each device, balance, and what a config change moves.",
    no_args_is_help=True,
)

DEFAULT_CONFIG = Path("cluster.toml")
STALE_S = 15.0  # a stats file older than this belongs to a broker that is not running
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The cluster file (TOML).")]
SiteOpt = Annotated[str | None, typer.Option("--site", "-s", help="The site; the first site if unset.")]


def _consoles() -> tuple[Console, Console]:
    return Console(), Console(stderr=True)


def _print_table(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; plain aligned columns otherwise."""
    if console.is_terminal:
        table = Table(title=title)
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*r)
        console.print(table)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    print(title)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _site(cluster: ClusterConfig, site: str | None, err: Console) -> SiteConfig:
    return exit_on_config_error(lambda: cluster.site(site) if site else cluster.sites[0], err)


def _ring(site: SiteConfig, err: Console) -> Ring:
    return exit_on_config_error(lambda: site_ring(site), err)


def _split(device: str, site: str | None) -> tuple[str | None, str]:
    """``plant-1/dev-0001`` names its site; a bare device id takes ``--site``."""
    if "/" in device:
        s, _, d = device.partition("/")
        return s, d
    return site, device


@ring_app.command("owner")
def owner(
    device: Annotated[str, typer.Argument(help="Device id (e.g. dev-0001), or SITE/DEVICE.")],
    site: SiteOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    n: Annotated[int, typer.Option("-n", min=1, help="Length of the preference list.")] = 3,
) -> None:
    """Print the owner of DEVICE and its preference list (the order it fails over in)."""
    out, err = _consoles()
    cluster = exit_on_config_error(lambda: load(config), err)
    site_id, device_id = _split(device, site)
    s = _site(cluster, site_id, err)
    brokers = exit_on_config_error(lambda: preference(s, device_id, n), err)
    rows = [
        [str(i + 1), b.id, f"{b.host}:{b.port}", f"{b.weight:g}", "owner" if i == 0 else "failover"]
        for i, b in enumerate(brokers)
    ]
    key = device_key(s.id, device_id)
    _print_table(out, f"{key}: owner {brokers[0].id}", ["#", "broker", "address", "weight", "role"], rows)


def _connected(cluster: ClusterConfig, site: SiteConfig, broker: str) -> str:
    path = cluster.run_dir / "stats" / f"{site.id}.{broker}.json"
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return "-"
    if not isinstance(data, dict):
        return "-"
    if data.get("stopped"):
        return "- (stopped)"
    ts = data.get("ts")
    if isinstance(ts, int | float) and time.time() - ts > STALE_S:
        return "- (stale)"
    value = data.get("clients")
    return str(value) if isinstance(value, int) else "-"


@ring_app.command("show")
def show(
    config: ConfigOpt = DEFAULT_CONFIG,
    site: SiteOpt = None,
    devices: Annotated[
        int, typer.Option("--devices", "-n", min=0, help="Also place this many device ids (dev-0001...).")
    ] = 0,
) -> None:
    """Each broker of the site: weight, expected share, owners of a device sample, clients connected now."""
    out, err = _consoles()
    cluster = exit_on_config_error(lambda: load(config), err)
    s = _site(cluster, site, err)
    ring = _ring(s, err)
    sample = Counter(ring.owner(device_key(s.id, d)) for d in device_ids(1, devices)) if devices else Counter()
    columns = ["broker", "address", "weight", "share"]
    if devices:
        columns += [f"expected of {devices}", f"owns of {devices}"]
    columns.append("connected")
    rows = []
    for b in s.brokers:
        share = ring.shares[b.id]
        row = [b.id, f"{b.host}:{b.port}", f"{b.weight:g}", f"{share:.1%}"]
        if devices:
            row += [f"{share * devices:.1f}", str(sample[b.id])]
        row.append(_connected(cluster, s, b.id))
        rows.append(row)
    _print_table(out, f"site {s.id}: {len(s.brokers)} brokers", columns, rows)


def _read_device_list(path: Path, err: Console) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot read device list {str(path)!r}: {exc.strerror}")
        raise typer.Exit(2) from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@ring_app.command("diff")
def diff(
    old: Annotated[Path, typer.Argument(help="The cluster file as it is.")],
    new: Annotated[Path, typer.Argument(help="The cluster file as it would be.")],
    site: SiteOpt = None,
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, help="Check device ids dev-0001...dev-N.")] = 1000,
    device_list: Annotated[
        Path | None, typer.Option("--device-list", help="File of device ids (or SITE/DEVICE), one a line.")
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="List at most this many moved devices (totals are complete).")] = 50,
) -> None:
    """Which devices would change owner if OLD.toml became NEW.toml, and where they would go."""
    out, err = _consoles()
    before = exit_on_config_error(lambda: load(old), err)
    after = exit_on_config_error(lambda: load(new), err)
    wanted = _read_device_list(device_list, err) if device_list is not None else device_ids(1, devices)
    old_sites = {s.id: s for s in before.sites}
    new_sites = {s.id: s for s in after.sites}
    site_ids = [site] if site else [s for s in old_sites if s in new_sites]
    for gone in sorted(set(old_sites) ^ set(new_sites)):
        where = "only in OLD" if gone in old_sites else "only in NEW"
        print(f"site {gone}: {where}; not compared")
    for site_id in site_ids:
        if site_id not in old_sites or site_id not in new_sites:
            err.print(f"[bold red]error:[/] site {site_id!r} is not in both files")
            raise typer.Exit(2)
        s_old, s_new = old_sites[site_id], new_sites[site_id]
        r_old, r_new = _ring(s_old, err), _ring(s_new, err)
        keys = []
        for item in wanted:
            item_site, device = _split(item, site_id)
            if item_site == site_id:
                keys.append(device_key(site_id, device))
        moved = moves(r_old, r_new, keys)
        totals = Counter(moved.values())
        pct = len(moved) / len(keys) if keys else 0.0
        print(f"site {site_id}: {len(moved)} of {len(keys)} devices would move ({pct:.1%})")
        if totals:
            _print_table(
                out,
                f"site {site_id}: moves by (from, to)",
                ["from", "to", "devices"],
                [[a, b, str(n)] for (a, b), n in sorted(totals.items())],
            )
        listed = sorted(moved.items())[:limit]
        if listed:
            _print_table(
                out,
                f"site {site_id}: moved devices" + (f" (first {limit})" if len(moved) > limit else ""),
                ["device", "from", "to"],
                [[k.partition("/")[2], a, b] for k, (a, b) in listed],
            )
