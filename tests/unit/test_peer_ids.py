"""``peer-`` client ids get peer treatment (local delivery only, membership hellos): reserved for the peer role.

With ``security.generate`` the site's peer links log in as ``peer-{site}`` (role ``peer``),
so the auth plugin refuses a ``peer-`` client id to anonymous clients and to any other role.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from amqtt.contexts import BaseContext
from amqtt.session import Session

from broker.auth import EdgeAuthPlugin
from broker.config import SecurityConfig
from broker.credentials import CredentialStore
from broker.membership import peer_client_id
from broker.security import AUTH_PLUGIN, security_plugins


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    from argon2 import PasswordHasher

    from broker import credentials

    cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    monkeypatch.setattr(credentials, "_HASHER", cheap)
    monkeypatch.setattr(credentials, "_DUMMY_HASH", cheap.hash("dummy"))


def _plugin(path: Path, **security: object) -> EdgeAuthPlugin:
    sec = SecurityConfig.model_validate({"credentials_file": path, **security})
    ctx = BaseContext()
    ctx.config = EdgeAuthPlugin.Config(**security_plugins(sec, site="plant-1")[AUTH_PLUGIN])
    return EdgeAuthPlugin(ctx)


def _login(plugin: EdgeAuthPlugin, client_id: str, username: str | None = None, password: str | None = None) -> bool:
    session = Session()
    session.client_id, session.username, session.password = client_id, username, password
    return asyncio.run(plugin.authenticate(session=session))


@pytest.fixture
def users(tmp_path: Path) -> Path:
    store = CredentialStore(tmp_path / "users.json")
    store.add("peer-plant-1", "peer", password="peer-pw", site="plant-1")
    store.add("dev-1", "device", password="dev-pw", site="plant-1")
    return store.path


def test_generated_peers_own_the_peer_ids(users: Path) -> None:
    plugin = _plugin(users, profile="demo", generate=True)
    link = peer_client_id("plant-1", "a2")
    assert not _login(plugin, link), "an anonymous client claimed a peer link's client id"
    assert not _login(plugin, peer_client_id("plant-1", "x9"), "dev-1", "dev-pw"), "a device claimed a peer id"
    assert _login(plugin, link, "peer-plant-1", "peer-pw")
    assert _login(plugin, "dev-plant-1-dev-0001"), "other anonymous clients are still let in (demo)"


def test_without_generated_peer_users_the_id_is_not_reserved(users: Path) -> None:
    # Peer links then log in as [security.client] or anonymously: their role is not known here.
    plugin = _plugin(users, profile="demo")
    assert _login(plugin, peer_client_id("plant-1", "a2"))
