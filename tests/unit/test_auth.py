"""Credentials file, the auth plugin's decisions and ``edgemq users``, without sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path

import pytest
import typer
from amqtt.contexts import BaseContext
from amqtt.session import Session
from typer.testing import CliRunner

from broker import tls
from broker.auth import EdgeAuthPlugin, principal_of
from broker.config import SecurityConfig, loads
from broker.credentials import CredentialStore
from broker.errors import ConfigError
from broker.security import ACL_PLUGIN, AUTH_PLUGIN, security_plugins
from edgemq.users_cmd import users_app

SECRET = "s3cret-Pa55word-that-must-not-leak"


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests hash with tiny Argon2 parameters (the format and the code path are the same)."""
    from argon2 import PasswordHasher

    from broker import credentials

    cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    monkeypatch.setattr(credentials, "_HASHER", cheap)
    monkeypatch.setattr(credentials, "_DUMMY_HASH", cheap.hash("dummy"))


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    s = CredentialStore(tmp_path / "users.json")
    s.add("dev-1", "device", password=SECRET, site="plant-1")
    s.add("ops", "operator", password="ops-password")
    s.add("dev-cert", "device", password=None)
    return s


def test_hashes_are_salted_and_the_file_holds_no_password(store: CredentialStore) -> None:
    text = store.path.read_text()
    assert SECRET not in text and "ops-password" not in text
    users = store.load()
    assert users["dev-1"].password_hash is not None and users["dev-1"].password_hash.startswith("$argon2id$")
    assert users["dev-1"].verify(SECRET) and not users["dev-1"].verify("wrong")
    store.add("dev-2", "device", password=SECRET)
    assert store.load()["dev-2"].password_hash != users["dev-1"].password_hash  # salt
    assert not users["dev-cert"].verify("")  # certificate-only users have no password
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


def test_remove_and_bad_names(store: CredentialStore) -> None:
    assert store.remove("ops") and not store.remove("ops")
    assert set(store.load()) == {"dev-1", "dev-cert"}
    for bad in ("a/b", "+", "#", "", "x" * 65):
        with pytest.raises(ConfigError):
            store.add(bad, "device", password="p")


def test_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "u.json"
    p.write_text('{"users": {"a/b": {"role": "device"}}}')
    with pytest.raises(ConfigError, match="malformed"):
        CredentialStore(p).load()
    assert CredentialStore(tmp_path / "absent.json").load() == {}


def _plugin(path: Path | None, **security: object) -> EdgeAuthPlugin:
    sec = SecurityConfig.model_validate({"credentials_file": path, **security})
    ctx = BaseContext()
    ctx.config = EdgeAuthPlugin.Config(**security_plugins(sec, site="plant-1")[AUTH_PLUGIN])
    return EdgeAuthPlugin(ctx)


def _session(username: str | None = None, password: str | None = None, client_id: str = "c1") -> Session:
    s = Session()
    s.client_id, s.username, s.password = client_id, username, password
    return s


def _login(plugin: EdgeAuthPlugin, session: Session, conn: tls.ConnectionInfo | None = None) -> bool:
    async def go() -> bool:
        if conn is not None:
            tls._CONNECTION.set(conn)
        return await plugin.authenticate(session=session)

    return asyncio.run(go())


def test_password_login(store: CredentialStore) -> None:
    plugin = _plugin(store.path, profile="secure")
    ok = _session("dev-1", SECRET)
    assert _login(plugin, ok)
    p = principal_of(ok)
    assert p is not None and (p.name, p.role, p.site, p.via) == ("dev-1", "device", "plant-1", "password")
    assert not _login(plugin, _session("dev-1", "wrong", "c2"))
    assert not _login(plugin, _session("nobody", SECRET, "c3"))
    assert not _login(plugin, _session("dev-cert", "", "c4"))
    assert not _login(plugin, _session(None, None, "c5"))  # anonymous is off in the secure profile


def test_anonymous_in_demo_profile(tmp_path: Path) -> None:
    plugin = _plugin(None)
    s = _session(None, None, "anon")
    assert _login(plugin, s)
    p = principal_of(s)
    assert p is not None and p.role == "demo" and p.via == "anonymous"
    assert not _login(_plugin(None, allow_anonymous=False), _session())


def test_wrong_site_and_client_id_takeover(store: CredentialStore, tmp_path: Path) -> None:
    plugin = _plugin(store.path, profile="secure")
    store.add("dev-9", "device", password="p9", site="plant-2")
    assert not _login(plugin, _session("dev-9", "p9"))  # bound to another site
    assert _login(plugin, _session("dev-1", SECRET, "dev-plant-1-dev-1"))
    # Another valid user may not take over dev-1's client id (and with it its session).
    assert not _login(plugin, _session("ops", "ops-password", "dev-plant-1-dev-1"))
    assert _login(plugin, _session("dev-1", SECRET, "dev-plant-1-dev-1"))


def test_verified_cache_follows_password_changes(store: CredentialStore) -> None:
    plugin = _plugin(store.path, profile="secure")
    assert _login(plugin, _session("dev-1", SECRET, "k1"))
    assert _login(plugin, _session("dev-1", SECRET, "k1"))  # from the cache
    assert not _login(plugin, _session("dev-1", "wrong", "k1"))
    store.add("dev-1", "device", password="new-password", site="plant-1")
    os.utime(store.path, ns=(1, 2 * 10**18))
    assert not _login(plugin, _session("dev-1", SECRET, "k1"))
    assert _login(plugin, _session("dev-1", "new-password", "k1"))


def test_credentials_reload_without_restart(store: CredentialStore) -> None:
    plugin = _plugin(store.path, profile="secure")
    assert not _login(plugin, _session("late", "pw"))
    store.add("late", "device", password="pw")
    os.utime(store.path, ns=(1, 10**18))  # a new mtime even on coarse clocks
    assert _login(plugin, _session("late", "pw", "c9"))


def test_certificate_login(store: CredentialStore, tmp_path: Path) -> None:
    tls_cfg = {"cert_file": tmp_path / "c.pem", "key_file": tmp_path / "k.pem", "ca_file": tmp_path / "ca.pem"}
    plugin = _plugin(store.path, profile="secure", tls=tls_cfg)
    s = _session(None, None, "x1")
    assert _login(plugin, s, tls.ConnectionInfo(tls=True, cert_cn="dev-cert"))
    p = principal_of(s)
    assert p is not None and (p.name, p.role, p.via) == ("dev-cert", "device", "certificate")
    assert _login(plugin, _session(None, None, "x2"), tls.ConnectionInfo(tls=True, cert_cn="unknown-dev"))
    assert not _login(plugin, _session("ops", None, "x3"), tls.ConnectionInfo(tls=True, cert_cn="dev-cert"))
    assert not _login(plugin, _session(None, None, "x4"), tls.ConnectionInfo(tls=True, cert_cn="a/b"))
    # Without our CA (ca_file unset) a certificate never logs anyone in.
    no_ca = _plugin(store.path, profile="secure", tls={**tls_cfg, "ca_file": None})
    assert not _login(no_ca, _session(None, None, "x5"), tls.ConnectionInfo(tls=True, cert_cn="dev-cert"))


def test_require_client_cert_fails_closed(store: CredentialStore, tmp_path: Path) -> None:
    tls_cfg = {"cert_file": "c", "key_file": "k", "ca_file": "ca", "require_client_cert": True}
    plugin = _plugin(store.path, profile="secure", tls=tls_cfg)
    assert not _login(plugin, _session("dev-1", SECRET, "r1"), tls.ConnectionInfo(tls=True, cert_cn=None))
    assert not _login(plugin, _session("dev-1", SECRET, "r2"))  # broker hook missing: unknown transport
    assert _login(plugin, _session("dev-1", SECRET, "r3"), tls.ConnectionInfo(tls=False, cert_cn=None))


def test_password_never_logged(store: CredentialStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    plugin = _plugin(store.path, profile="secure")
    assert not _login(plugin, _session("dev-1", SECRET[::-1] + SECRET, "l1"))
    assert _login(plugin, _session("dev-1", SECRET, "l2"))
    assert caplog.records and SECRET not in caplog.text


def test_security_plugins_shape(tmp_path: Path) -> None:
    cfg = loads('[[sites]]\nid = "s"\n[[sites.brokers]]\nid = "a1"\nport = 20001\n')
    plugins = security_plugins(cfg.security, site="s")
    assert set(plugins) == {AUTH_PLUGIN, ACL_PLUGIN}
    assert plugins[AUTH_PLUGIN]["allow_anonymous"] is True and plugins[AUTH_PLUGIN]["cert_login"] is False


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(users_app, name="users")
    return app


def test_users_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        '[security]\nprofile = "secure"\ncredentials_file = "users.json"\n'
        '[[sites]]\nid = "s"\n[[sites.brokers]]\nid = "a1"\nport = 20001\n'
    )
    runner = CliRunner()
    c = ["--config", str(cluster)]
    r = runner.invoke(_app(), ["users", "add", "dev-1", "--site", "s", "--password-stdin", *c], input=SECRET + "\n")
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "prompted-pw")
    r = runner.invoke(_app(), ["users", "add", "ops", "--role", "operator", *c])
    assert r.exit_code == 0 and "prompted-pw" not in r.output
    assert runner.invoke(_app(), ["users", "add", "x", "--role", "wizard", *c], input="p\n").exit_code == 2
    r = runner.invoke(_app(), ["users", "list", "--json", *c])
    rows = json.loads(r.output)
    assert [(u["name"], u["role"], u["site"], u["password"]) for u in rows] == [
        ("dev-1", "device", "s", True),
        ("ops", "operator", None, True),
    ]
    assert "argon2" not in r.output
    assert CredentialStore(tmp_path / "users.json").load()["ops"].verify("prompted-pw")
    assert runner.invoke(_app(), ["users", "remove", "ops", *c]).exit_code == 0
    assert runner.invoke(_app(), ["users", "remove", "ops", *c]).exit_code == 1
    plain = runner.invoke(_app(), ["users", "list", *c]).output
    assert "dev-1" in plain and "ops" not in plain
