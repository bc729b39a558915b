"""[security] generate: the generated CA, server certificate, users and passwords, and client logins."""

from __future__ import annotations

import json
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from broker import provision
from broker.client_auth import ClientLogin, cloud_login, site_login, uplink_cloud
from broker.config import ClusterConfig, TlsConfig, loads
from broker.credentials import CredentialStore
from broker.errors import ConfigError

SECURE = """
run_dir = "run"
[cloud]
port = 20000
tls_port = 20010
[security]
profile = "secure"
generate = true
[[sites]]
id = "s1"
[[sites.brokers]]
id = "a1"
port = 20001
tls_port = 20011
"""


def _cfg(tmp_path: Path, text: str = SECURE) -> ClusterConfig:
    return loads(text, base_dir=tmp_path)


def test_generate_points_unset_paths_into_the_run_directory(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    lay = provision.Layout(tmp_path / "run")
    assert cfg.security.credentials_file == lay.users
    assert cfg.security.tls is not None and cfg.security.tls.cert_file == lay.server_cert
    assert cfg.cloud.tls is not None and cfg.cloud.tls.ca_file == lay.ca_cert
    assert not cfg.security.anonymous


def test_generate_needs_tls_ports(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cloud\.tls_port"):
        _cfg(tmp_path, SECURE.replace("tls_port = 20010\n", ""))
    with pytest.raises(ConfigError, match="tls_port on every broker"):
        _cfg(tmp_path, SECURE.replace("tls_port = 20011\n", ""))


def test_ensure_creates_private_files_and_is_idempotent(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    lay = provision.ensure(cfg)
    for path in (lay.ca_key, lay.server_key, lay.users, lay.passwords):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(lay.dir.stat().st_mode) == 0o700
    users = CredentialStore(lay.users).load()
    assert {"bridge-s1", "peer-s1", "dashboard", "operator"} <= set(users)
    assert users["bridge-s1"].site == "s1" and users["bridge-s1"].role == "bridge"
    pw = provision.password(cfg, "bridge-s1")
    assert pw and users["bridge-s1"].verify(pw)
    # The users file holds hashes only.
    assert pw not in lay.users.read_text()
    before = {p.name: p.read_bytes() for p in lay.dir.iterdir()}
    provision.ensure(cfg)
    assert {p.name: p.read_bytes() for p in lay.dir.iterdir()} == before


def test_devices_get_their_own_passwords(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    provision.ensure(cfg)
    pws = provision.ensure_devices(cfg, "s1", ["dev-0001", "dev-0002"])
    assert len(set(pws.values())) == 2
    users = CredentialStore(cfg.security.credentials_file or Path()).load()
    assert users["dev-0001"].role == "device" and users["dev-0001"].site == "s1"
    assert provision.ensure_devices(cfg, "s1", ["dev-0001"]) == {"dev-0001": pws["dev-0001"]}


def test_malformed_passwords_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    lay = provision.ensure(cfg)
    lay.passwords.write_text(json.dumps({"nope": 1}))
    with pytest.raises(ConfigError, match="malformed"):
        provision.password(cfg, "dashboard")


def _serve_tls_once(cert: Path, key: Path) -> tuple[int, threading.Thread]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, t


def test_the_generated_server_certificate_verifies_with_the_generated_ca(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    lay = provision.ensure(cfg)
    login = cloud_login(cfg, "dashboard")
    ctx = login.ssl_context()
    assert ctx is not None
    port, t = _serve_tls_once(lay.server_cert, lay.server_key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(2) == b"ok"
    t.join(5)
    # ... and does not verify against the system CAs (the check can fail).
    port, t = _serve_tls_once(lay.server_cert, lay.server_key)
    plain = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, pytest.raises(ssl.SSLCertVerificationError):
        plain.wrap_socket(raw, server_hostname="127.0.0.1")
    t.join(5)


def test_logins_for_each_client(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    provision.ensure(cfg)
    bridge = cloud_login(cfg, "bridge", "s1")
    assert bridge.username == "bridge-s1" and bridge.password == provision.password(cfg, "bridge-s1")
    assert bridge.endpoint("127.0.0.1", 20000, 20010) == ("127.0.0.1", 20010)
    assert site_login(cfg, "peer", "s1").username == "peer-s1"
    assert site_login(cfg, "dashboard").username == "dashboard"
    # The password is never in repr (log lines format objects with %r).
    assert bridge.password and bridge.password not in repr(bridge)
    up = uplink_cloud(cfg, "s1")
    assert (up.username, up.port, up.tls) == ("bridge-s1", 20010, bridge.tls)


def test_without_generate_logins_come_from_the_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = SECURE.replace("generate = true", 'credentials_file = "u.json"').replace(
        "tls_port = 20010\n", 'tls_port = 20010\nusername = "up"\npassword_env = "UP_PW"\n'
    )
    monkeypatch.setenv("UP_PW", "s3cret")
    cfg = _cfg(tmp_path, text)
    login = cloud_login(cfg, "bridge", "s1")
    assert (login.username, login.password, login.tls) == ("up", "s3cret", None)
    assert login.endpoint("h", 1, 2) == ("h", 1)  # no TLS settings: the plaintext port
    assert site_login(cfg) == ClientLogin()
    assert ClientLogin(tls=TlsConfig()).endpoint("h", 1, 2) == ("h", 2)
