"""``edgemq users``: manage the credentials file (salted Argon2id hashes).

    edgemq users add NAME --role device [--site S] [--password-stdin | --cert-only]
    edgemq users remove NAME
    edgemq users list [--json]
    edgemq users password NAME        (generated users of [security] generate = true)

The file is ``[security] credentials_file`` of the cluster file, or ``--file``.
Passwords are read from a hidden prompt (asked twice) or, with ``--password-stdin``,
from the first line of standard input; they are never echoed, printed or logged.
Running brokers pick up changes at the next CONNECT.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from broker.config import SecurityConfig, load
from broker.credentials import CredentialStore
from edgemq.devices_cmd import exit_on_config_error

__all__ = ["users_app"]

users_app = typer.Typer(help="Users of the brokers: add, remove, list (credentials file).", no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The cluster file (TOML).")]
FileOpt = Annotated[
    Path | None, typer.Option("--file", "-f", help="The credentials file; default: the cluster file's.")
]


def _store(config: Path, file: Path | None, err: Console) -> tuple[CredentialStore, SecurityConfig | None]:
    if file is not None:
        security = None
        if config.exists():
            security = exit_on_config_error(lambda: load(config).security, err)
        return CredentialStore(file), security
    security = exit_on_config_error(lambda: load(config).security, err)
    if security.credentials_file is None:
        err.print("[bold red]error:[/] the cluster file sets no [security] credentials_file")
        err.print('[dim]hint: add credentials_file = "users.json" under [security], or pass --file[/]')
        raise typer.Exit(2)
    return CredentialStore(security.credentials_file), security


def _read_password(from_stdin: bool, err: Console) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            err.print("[bold red]error:[/] the passwords differ")
            raise typer.Exit(2)
    if not password:
        err.print("[bold red]error:[/] empty password")
        raise typer.Exit(2)
    return password


@users_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="User id (a device id for role 'device').")],
    role: Annotated[str, typer.Option("--role", "-r", help="Role from [security.roles].")] = "device",
    site: Annotated[str | None, typer.Option("--site", "-s", help="Bind the user to one site.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
    ] = False,
    cert_only: Annotated[
        bool, typer.Option("--cert-only", help="No password: logs in only with a client certificate (CN = NAME).")
    ] = False,
    config: ConfigOpt = Path("cluster.toml"),
    file: FileOpt = None,
) -> None:
    """Add a user or replace its password, role and site."""
    out, err = Console(), Console(stderr=True)
    store, security = _store(config, file, err)
    if security is not None and role not in security.roles:
        err.print(f"[bold red]error:[/] unknown role {role!r}; known: {', '.join(security.roles)}")
        raise typer.Exit(2)
    password = None if cert_only else _read_password(password_stdin, err)
    user = exit_on_config_error(lambda: store.add(name, role, password=password, site=site), err)
    out.print(f"user {user.name} ({user.role}{', site ' + user.site if user.site else ''}) saved to {store.path}")


@users_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="User id.")],
    config: ConfigOpt = Path("cluster.toml"),
    file: FileOpt = None,
) -> None:
    """Remove a user (its open connections stay until they reconnect)."""
    out, err = Console(), Console(stderr=True)
    store, _ = _store(config, file, err)
    if not exit_on_config_error(lambda: store.remove(name), err):
        err.print(f"[bold red]error:[/] no user {name!r} in {store.path}")
        raise typer.Exit(1)
    out.print(f"user {name} removed from {store.path}")


@users_app.command("list")
def list_users(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    config: ConfigOpt = Path("cluster.toml"),
    file: FileOpt = None,
) -> None:
    """List users: name, role, site, and whether a password is set (never the hash)."""
    _, err = Console(), Console(stderr=True)
    store, _ = _store(config, file, err)
    users = exit_on_config_error(lambda: sorted(store.load().values(), key=lambda u: u.name), err)
    rows = [{"name": u.name, "role": u.role, "site": u.site, "password": u.password_hash is not None} for u in users]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<24} {'role':<10} {'site':<12} password")
    for r in rows:
        print(f"{r['name']:<24} {r['role']:<10} {r['site'] or '-':<12} {'yes' if r['password'] else 'no (cert only)'}")


@users_app.command("password")
def show_password(
    name: Annotated[str, typer.Argument(help="A generated user (dashboard, operator, bridge-SITE, dev-0001...).")],
    config: ConfigOpt = Path("cluster.toml"),
) -> None:
    """Print the generated password of a user ([security] generate = true only), for scripts."""
    from broker.provision import Layout, password

    err = Console(stderr=True)
    cfg = exit_on_config_error(lambda: load(config), err)
    if not cfg.security.generate:
        err.print("[bold red]error:[/] the cluster file does not set [security] generate = true")
        raise typer.Exit(2)
    secret = exit_on_config_error(lambda: password(cfg, name), err)
    if secret is None:
        err.print(f"[bold red]error:[/] no generated password for {name!r} in {Layout(cfg.run_dir).passwords}")
        raise typer.Exit(1)
    print(secret)
